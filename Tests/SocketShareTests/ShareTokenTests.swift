import Glibc
import Testing
@testable import SocketShare
@testable import SocketShareCore
@testable import SocketShareServer

extension SocketShareTests {
    @Suite struct ShareTokenTests {
        static func sample(_ mechanism: ShareMechanism = .sharer, secret: ShareSecret = .random()) throws -> ShareToken {
            let socket = try SocketDescriptor.listening(on: .ipv4(host: "127.0.0.1", port: 0))
            defer { try? socket.close() }
            return ShareToken(
                mechanism: mechanism, description: try socket.socketDescription(), source: .current,
                target: ProcessIdentity(pid: 4242, startTime: 987_654), createdAtMilliseconds: 1_700_000_000_000,
                expiresAtMilliseconds: 1_700_000_060_000, endpoint: "/run/sockshare/sharer-1-abc.sock", shareID: 77,
                secret: secret)
        }

        @Test func roundTripsThroughBinaryAndText() throws {
            for mechanism in [ShareMechanism.sharer, .pidfd, .broker] {
                let token = try Self.sample(mechanism)
                #expect(try ShareToken(bytes: token.bytes) == token)
                #expect(try ShareToken(text: token.text) == token)
                #expect(try ShareToken(text: "  " + token.text + "\n") == token)
                #expect(token.text.hasPrefix("sks1."))
                #expect(token.text.allSatisfy { $0.isLetter || $0.isNumber || "-_.".contains($0) })
            }
        }

        @Test func textNeverShowsTheSecretInDescriptions() throws {
            let secret = ShareSecret.random()
            #expect(secret.description == "<secret>")
            #expect(!"\(try Self.sample(secret: secret))".contains(Base64URL.encode(secret.bytes)))
        }

        @Test func rejectsEveryTruncation() throws {
            let token = try Self.sample()
            let bytes = token.bytes
            for length in 0..<bytes.count {
                #expect(throws: SocketShareError.self) { try ShareToken(bytes: Array(bytes[0..<length])) }
            }
            let text = token.text
            for length in 0..<text.count {
                #expect(throws: SocketShareError.self) { try ShareToken(text: String(text.prefix(length))) }
            }
        }

        @Test func rejectsEverySingleBitFlip() throws {
            for mechanism in [ShareMechanism.sharer, .pidfd] {
                let bytes = try Self.sample(mechanism).bytes
                for index in bytes.indices {
                    for bit in 0..<8 {
                        var flipped = bytes
                        flipped[index] ^= 1 << bit
                        #expect(throws: SocketShareError.self) { try ShareToken(bytes: flipped) }
                    }
                }
                let text = Array(try Self.sample(mechanism).text.utf8)
                for index in text.indices {
                    for bit in 0..<8 {
                        var flipped = text
                        flipped[index] ^= 1 << bit
                        #expect(throws: SocketShareError.self) { try ShareToken(text: String(decoding: flipped, as: UTF8.self)) }
                    }
                }
            }
        }

        @Test func rejectsRandomInputWithoutCrashing() throws {
            var generator = SystemRandomNumberGenerator()
            var rejected = 0
            for _ in 0..<5_000 {
                let length = Int.random(in: 0..<200, using: &generator)
                let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
                if (try? ShareToken(bytes: bytes)) == nil { rejected += 1 }
                _ = try? ShareToken(text: "sks1." + Base64URL.encode(bytes))
                _ = try? ShareToken(text: String(decoding: bytes, as: UTF8.self))
            }
            #expect(rejected == 5_000)
        }

        /// A token with a valid checksum but a bad field: the error names the field.
        @Test(arguments: [
            (2, UInt8(9), "family"), (3, UInt8(0), "type"), (1, UInt8(7), "mechanism"), (0, UInt8(2), "version"),
            (8, UInt8(0x80), "flags"),
        ])
        func namesTheFieldAtFault(offset: Int, value: UInt8, field: String) throws {
            var bytes = try Self.sample().bytes
            bytes[offset] = value
            bytes.removeLast(4)
            var writer = ByteWriter()
            writer.write(CRC32.checksum(bytes))
            let error = #expect(throws: SocketShareError.self) { try ShareToken(bytes: bytes + writer.bytes) }
            #expect(error?.code == .malformed)
            #expect(error?.detail.contains("field \(field)") == true, "\(String(describing: error))")
        }

        @Test func namesTheProblemWithTheText() throws {
            let token = try Self.sample().text
            let cases: [(String, String)] = [
                ("", "prefix"), ("hello", "prefix"), ("sks9.AAAA", "sks9."),
                (token + "*", "not base64url"), (token.replacingLast(with: "B"), "checksum|stray"),
            ]
            for (text, expected) in cases {
                let error = #expect(throws: SocketShareError.self) { try ShareToken(text: text) }
                let detail = error?.detail ?? ""
                #expect(expected.split(separator: "|").contains { detail.contains($0) }, "\(text): \(detail)")
            }
        }

        @Test func base64URLIsCanonical() {
            for length in 0..<40 {
                let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
                let text = Base64URL.encode(bytes)
                #expect(Base64URL.decode(Array(text.utf8)) == .success(bytes))
            }
            #expect(Base64URL.decode(Array("AB".utf8)) == .failure(.nonZeroPadding))
            #expect(Base64URL.decode(Array("A".utf8)) == .failure(.badLength(1)))
        }
    }
}

extension String {
    func replacingLast(with character: Character) -> String {
        var copy = self
        let last = copy.removeLast()
        return copy + String(last == character ? "C" : character)
    }
}
