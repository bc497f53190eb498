import Logging
import NIOCore
import NIOEmbedded
import StickyCore
import Synchronization
import XCTest

@testable import StickyControlPlane

/// The admin session, on an embedded channel: the same code serves the Unix
/// socket and the TLS listener, so its rules are checked once, here, with a
/// handler that echoes and a manual clock for the idle timeout.
final class AdminSessionTests: XCTestCase {
    /// A control plane stand-in: `quit` ends, `wait` answers later (as
    /// `upgrade` does), anything else is echoed with the peer's uid.
    final class Stub: Sendable {
        let pending = Mutex<[AdminPendingReply]>([])
        let seen = Mutex<[String]>([])

        var handler: AdminService.Handler {
            { [self] line, peer in
                seen.withLock { $0.append(String(line)) }
                if line == "quit" { return AdminReply("bye", close: true) }
                if line.hasPrefix("wait") {
                    let p = AdminPendingReply()
                    pending.withLock { $0.append(p) }
                    return AdminReply(pending: p)
                }
                if line == "ready" {
                    let p = AdminPendingReply()
                    p.resolve("was ready")
                    return AdminReply(pending: p)
                }
                return AdminReply("\(line) as \(peer.uid)")
            }
        }
    }

    var stub = Stub()

    func session(_ admission: AdminAdmission? = .admitted(PeerCredentials(pid: 1, uid: 7, gid: 7))) throws -> EmbeddedChannel {
        let handler = AdminSessionHandler(handler: stub.handler, admission: admission, label: "admin", logger: Logger(label: "test"))
        let channel = EmbeddedChannel(handler: handler)
        try channel.connect(to: NIOCore.SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    func send(_ channel: EmbeddedChannel, _ text: String) throws {
        try channel.writeInbound(channel.allocator.buffer(string: text))
        channel.embeddedEventLoop.run()
    }

    /// Everything written so far, as one string.
    func output(_ channel: EmbeddedChannel) throws -> String {
        var text = ""
        while let b = try channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: b) }
        return text
    }

    func testLinesAreAnsweredInOrderEachEndedByAnEmptyLine() throws {
        let c = try session()
        try send(c, "one\n\n  \r\ntw")
        try send(c, "o\r\n")
        XCTAssertEqual(try output(c), "one as 7\n\ntwo\r as 7\n\n")
        XCTAssertTrue(c.isActive)
    }

    func testTooLongLineIsAnsweredOnceAndTheSessionGoesOn() throws {
        let c = try session()
        try send(c, String(repeating: "x", count: 5000) + "\nok\n")
        XCTAssertEqual(try output(c), AdminLineFramer.tooLongMessage + "\n\nok as 7\n\n")
    }

    func testQuitAnswersThenClosesAndRunsNothingAfter() throws {
        let c = try session()
        try send(c, "quit\nadd target 127.0.0.1:9\n")
        XCTAssertEqual(try output(c), "bye\n\n")
        XCTAssertFalse(c.isActive)
        XCTAssertEqual(stub.seen.withLock { $0 }, ["quit"])
    }

    func testPendingAnswerHoldsLaterLinesInOrder() throws {
        let c = try session()
        try send(c, "first\nwait\nafter\n")
        XCTAssertEqual(try output(c), "first as 7\n\n")
        // Lines sent meanwhile wait too.
        try send(c, "later\n")
        XCTAssertEqual(try output(c), "")
        XCTAssertEqual(stub.seen.withLock { $0 }, ["first", "wait"])
        stub.pending.withLock { $0 }[0].resolve("done")
        c.embeddedEventLoop.run()
        XCTAssertEqual(try output(c), "done\n\nafter as 7\n\nlater as 7\n\n")
    }

    func testAnswerResolvedBeforeItIsAwaitedKeepsItsPlace() throws {
        let c = try session()
        try send(c, "ready\nnext\n")
        XCTAssertEqual(try output(c), "was ready\n\nnext as 7\n\n")
    }

    func testHalfCloseAnswersWhatWasAskedThenCloses() throws {
        let c = try session()
        try send(c, "wait\nafter\n")
        c.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        c.embeddedEventLoop.run()
        XCTAssertTrue(c.isActive, "closed before the pending answer")
        stub.pending.withLock { $0 }[0].resolve("done")
        c.embeddedEventLoop.run()
        XCTAssertEqual(try output(c), "done\n\nafter as 7\n\n")
        XCTAssertFalse(c.isActive)
    }

    func testRefusedPeerGetsOneLineAndIsClosed() throws {
        let c = try session(.refused("error: permission denied for uid 1002"))
        XCTAssertEqual(try output(c), "error: permission denied for uid 1002\n\n")
        XCTAssertFalse(c.isActive)
        XCTAssertEqual(stub.seen.withLock { $0 }, [])
    }

    func testTLSSessionReadsNothingUntilAdmitted() throws {
        let c = try session(nil)
        try send(c, "early\n")
        XCTAssertEqual(try output(c), "")
        c.pipeline.fireUserInboundEventTriggered(AdminAdmission.admitted(.remoteAllowed))
        try send(c, "late\n")
        XCTAssertEqual(try output(c), "late as 0\n\n")
    }

    func testIdleSessionIsClosedButNotWhileWaiting() throws {
        let c = try session()
        c.embeddedEventLoop.advanceTime(by: .milliseconds(AdminLimits.sessionIdleMs - 1000))
        try send(c, "wait\n")
        c.embeddedEventLoop.advanceTime(by: .milliseconds(2 * AdminLimits.sessionIdleMs))
        XCTAssertTrue(c.isActive, "a session waiting for its answer is not idle")
        stub.pending.withLock { $0 }[0].resolve("done")
        c.embeddedEventLoop.run()
        XCTAssertEqual(try output(c), "done\n\n")
        c.embeddedEventLoop.advanceTime(by: .milliseconds(AdminLimits.sessionIdleMs + 1000))
        XCTAssertFalse(c.isActive)
    }

    func testListenerLoadCountsSessionsThenRefusalsThenNothing() {
        let load = ListenerLoad(label: "admin", logger: Logger(label: "test"))
        var slots: [ListenerLoad.Slot?] = []
        for _ in 0..<(AdminLimits.sessionsMax + AdminLimits.refusalsMax + 1) { slots.append(load.take()) }
        XCTAssertEqual(slots.prefix(AdminLimits.sessionsMax).filter { $0 == .session }.count, AdminLimits.sessionsMax)
        XCTAssertEqual(slots.dropFirst(AdminLimits.sessionsMax).prefix(AdminLimits.refusalsMax).filter { $0 == .refusal }.count,
                       AdminLimits.refusalsMax)
        XCTAssertNil(slots.last!)
        load.release(.session)
        XCTAssertEqual(load.take(), .session)
    }
}
