import CURingShim
import Glibc
import Logging
import StickyCore
import StickyDataPlane
import Synchronization

/// The VIP on a local interface while this instance is in the rotation: a
/// routing daemon announcing the interface's addresses (BIRD's `protocol
/// direct`) then draws the router's ECMP traffic here. Removing it takes
/// the host out of rotation without touching open connections: their
/// packets keep arriving as long as the router still has a path, and
/// established flows are matched by the socket, not the address list
/// (docs/SCALING.md).
final class VIPAnnouncer: Sendable {
    let address: IPAddress
    let interface: String
    let logger: Logger
    let announced = Atomic<Bool>(false)

    init(_ config: VIPConfig, logger: Logger) {
        address = config.address
        interface = config.interface
        self.logger = logger
    }

    func announce() throws { try change(add: true) }
    func withdraw() throws { try change(add: false) }

    private func change(add: Bool) throws {
        var rc: Int32
        switch address {
        case .v4(let v):
            var be = v.bigEndian
            rc = sticky_vip_change(add ? 1 : 0, AF_INET, &be, interface)
        case .v6(let hi, let lo):
            var bytes = (hi.bigEndian, lo.bigEndian)
            rc = sticky_vip_change(add ? 1 : 0, AF_INET6, &bytes, interface)
        }
        guard rc == 0 else {
            throw SystemError("vip \(address) \(add ? "add to" : "removal from") \(interface) (needs CAP_NET_ADMIN and an existing interface)", errno: -rc)
        }
        announced.store(add, ordering: .releasing)
        logger.notice(add ? "vip announced" : "vip withdrawn", metadata: ["vip": "\(address)", "interface": "\(interface)"])
    }
}

/// `stickyd vip-release`: the VIP off its interface with no daemon running.
/// The unit runs it as `ExecStopPost`, which systemd runs after any exit, a
/// crash included: a dead stickyd cannot remove the VIP itself, and while
/// the VIP stays on the interface BIRD keeps drawing the router's traffic to
/// a host that refuses it (docs/SCALING.md).
public enum VIPRelease {
    /// Removing an address that is not there succeeds (the state asked for);
    /// a missing interface or a missing CAP_NET_ADMIN throws.
    public static func run(_ config: VIPConfig) throws {
        let quiet = Logger(label: "stickyd.vip", factory: { _ in SwiftLogNoOpLogHandler() })
        try VIPAnnouncer(config, logger: quiet).withdraw()
    }
}
