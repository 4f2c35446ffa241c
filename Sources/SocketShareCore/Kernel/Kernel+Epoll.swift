import CSocketShare
import Glibc

extension Kernel {
    /// `epoll_create1(EPOLL_CLOEXEC)`.
    package static func epollCreate() throws(SocketShareError) -> CInt {
        try retrying("epoll_create1") { epoll_create1(CInt(EPOLL_CLOEXEC)) }
    }

    /// `epoll_ctl(EPOLL_CTL_ADD)`, tagging `fd`'s events with `data`: readability by default. With
    /// `exclusive` (`EPOLLEXCLUSIVE`) the kernel wakes one of the waiters on `fd`, not all of them.
    package static func epollAdd(
        _ epoll: CInt, _ fd: CInt, data: UInt64, events: UInt32 = EPOLLIN.rawValue, exclusive: Bool = false
    ) throws(SocketShareError) {
        var event = epoll_event()
        event.events = events | (exclusive ? EPOLLEXCLUSIVE.rawValue : 0)
        event.data.u64 = data
        _ = try retrying("epoll_ctl(EPOLL_CTL_ADD)", "descriptor \(fd)") { epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) }
    }

    /// `epoll_ctl(EPOLL_CTL_MOD)`: the events watched for `fd` become `events`.
    package static func epollModify(_ epoll: CInt, _ fd: CInt, data: UInt64, events: UInt32) throws(SocketShareError) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = data
        _ = try retrying("epoll_ctl(EPOLL_CTL_MOD)", "descriptor \(fd)") { epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &event) }
    }

    /// `epoll_ctl(EPOLL_CTL_DEL)`; a descriptor already gone from the set is not an error.
    package static func epollRemove(_ epoll: CInt, _ fd: CInt) {
        var event = epoll_event()
        _ = epoll_ctl(epoll, EPOLL_CTL_DEL, fd, &event)
    }

    /// `epoll_wait(2)`: the tags (`data`) of the descriptors that are ready, waiting at most
    /// `milliseconds` (-1: until one is). An interrupted wait returns nothing.
    package static func epollWait(_ epoll: CInt, maximum: Int = 16, milliseconds: CInt) throws(SocketShareError) -> [UInt64] {
        try epollWaitEvents(epoll, maximum: maximum, milliseconds: milliseconds).map(\.tag)
    }

    /// `epoll_wait(2)`: the tag and the events of each descriptor that is ready.
    package static func epollWaitEvents(
        _ epoll: CInt, maximum: Int = 64, milliseconds: CInt
    ) throws(SocketShareError) -> [(tag: UInt64, events: UInt32)] {
        try withUnsafeTemporaryAllocation(of: epoll_event.self, capacity: maximum) {
            (events) throws(SocketShareError) -> [(tag: UInt64, events: UInt32)] in
            let count = epoll_wait(epoll, events.baseAddress, CInt(maximum), milliseconds)
            if count < 0 {
                if errno == EINTR { return [] }
                throw SocketShareError.system("epoll_wait", errno: errno)
            }
            return (0..<Int(count)).map { (events[$0].data.u64, events[$0].events) }
        }
    }

    /// `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`: a counter other threads wake a waiter with.
    package static func eventDescriptor() throws(SocketShareError) -> CInt {
        try retrying("eventfd") { eventfd(0, CInt(EFD_CLOEXEC | EFD_NONBLOCK)) }
    }

    /// Adds one to an eventfd's counter, making it readable.
    package static func signal(eventDescriptor fd: CInt) {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }
}
