import Testing

/// Every suite is nested here and runs serially: several tests count this process's open
/// descriptors, which a test running alongside would disturb.
@Suite(.serialized) enum SocketShareTests {}
