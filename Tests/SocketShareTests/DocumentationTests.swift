import Glibc
import Testing
@testable import SocketShareCore

/// The docs compile: every Swift block of the README, docs/ and the DocC articles appears, as whole
/// lines, in a file of `examples/dependent-package` — a package that depends on SocketShare as the
/// README says, against its public API only — which CI builds. A block may be a part of a program
/// there; `// docs: hide` … `// docs: show` lines are the glue a page leaves out.
extension SocketShareTests {
    @Suite struct DocumentationTests {
        static let root = Paths.sourceRoot

        /// The pages whose Swift blocks must compile.
        static var pages: [String] {
            var pages = ["README.md"]
            pages += Kernel.directoryEntries(root + "/docs").filter { $0.hasSuffix(".md") }.sorted().map { "docs/" + $0 }
            for module in Kernel.directoryEntries(root + "/Sources").sorted() {
                for catalog in Kernel.directoryEntries(root + "/Sources/" + module) where catalog.hasSuffix(".docc") {
                    pages += Kernel.directoryEntries(root + "/Sources/\(module)/\(catalog)").filter { $0.hasSuffix(".md") }.sorted()
                        .map { "Sources/\(module)/\(catalog)/\($0)" }
                }
            }
            return pages
        }

        /// The Swift blocks of a page: (line number, lines).
        static func blocks(of page: String) throws -> [(line: Int, lines: [String])] {
            let text = String(decoding: try Kernel.readFile(root + "/" + page), as: UTF8.self)
            var blocks: [(Int, [String])] = []
            var current: [String]?
            var start = 0
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                if current == nil, String(line).trimmingSpaces == "```swift" {
                    current = []
                    start = number + 2
                } else if current != nil, String(line).trimmingSpaces == "```" {
                    blocks.append((start, current!))
                    current = nil
                } else if current != nil {
                    current!.append(String(line))
                }
            }
            return blocks
        }

        /// The regions of the dependent package's files (lines between `// docs: begin` and `end`,
        /// without the hidden ones).
        static func regions() throws -> [[String]] {
            var files = [root + "/examples/dependent-package/Package.swift"]
            let sources = root + "/examples/dependent-package/Sources"
            for target in Kernel.directoryEntries(sources) {
                files += Kernel.directoryEntries(sources + "/" + target).filter { $0.hasSuffix(".swift") }.map { "\(sources)/\(target)/\($0)" }
            }
            var regions: [[String]] = []
            for file in files {
                var region: [String]?
                var hidden = false
                for line in String(decoding: try Kernel.readFile(file), as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
                    switch String(line).trimmingSpaces {
                    case "// docs: begin": region = []
                    case "// docs: end":
                        if let done = region { regions.append(done) }
                        region = nil
                    case "// docs: hide": hidden = true
                    case "// docs: show": hidden = false
                    default:
                        if !hidden { region?.append(String(line)) }
                    }
                }
            }
            return regions
        }

        /// `lines` without their common indentation and trailing blanks.
        static func dedented(_ lines: some Collection<String>) -> [String] {
            let indent = lines.filter { !$0.trimmingSpaces.isEmpty }.map { $0.prefix { $0 == " " }.count }.min() ?? 0
            var result = lines.map { $0.trimmingSpaces.isEmpty ? "" : String($0.dropFirst(indent)).replacing(#/\s+$/#, with: "") }
            while result.last == "" { result.removeLast() }
            return result
        }

        @Test func everySwiftBlockOfTheDocsIsCompiledByTheDependentPackage() throws {
            let regions = try Self.regions()
            var checked = 0
            for page in Self.pages {
                for block in try Self.blocks(of: page) {
                    let wanted = Self.dedented(block.lines)
                    let found = regions.contains { region in
                        guard region.count >= wanted.count else { return false }
                        return (0...(region.count - wanted.count)).contains { start in
                            Self.dedented(region[start..<(start + wanted.count)]) == wanted
                        }
                    }
                    #expect(found, "\(page):\(block.line): this Swift block is compiled nowhere; add it to examples/dependent-package")
                    checked += 1
                }
            }
            #expect(checked >= 12, "the pages have \(checked) Swift blocks")
        }
    }
}
