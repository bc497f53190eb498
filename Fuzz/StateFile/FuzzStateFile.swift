// libFuzzer target for the state-file loader (`make fuzz-state-file`).
//
// The input is a state file's bytes (JSON, read with Foundation's decoder).
// A hand-edited or half-written state file must stop the daemon with a
// message, or be laid over the config to a registry the rest of the daemon
// can run on. Besides "never traps", it checks:
// - `StateFile.decode` throws nothing but `RegistryError`, naming the file;
// - what it accepts, written back with `encoded()`, decodes to the same;
// - laid over a registry built from a config (`overlay`), at a clock some
//   years after boot, it keeps the registry's rules, those `add` enforces:
//   unique addresses and names in a pool, at most `TargetMask.capacity`
//   targets, weights in range, drain deadlines not before now, and removed
//   config targets that are config targets and not in the pool;
// - the result, saved as the daemon saves it, loads back.
import Foundation
import StickyCore

let file = "/var/lib/stickyd/state.json"
// A monotonic clock some years after boot, and a wall clock of 2025.
let nowMs: Millis = 100_000_000_000
let nowUnixMs: Int64 = 1_750_000_000_000

/// The registry a config of two pools gives (as `TargetRegistry(config:)`).
let base: TargetRegistry = {
    func record(_ a: String, _ w: Int, _ name: String?) -> TargetRecord {
        TargetRecord(spec: TargetSpec(address: SocketAddress(a)!, weight: w, name: name), origin: .config)
    }
    return TargetRegistry(pools: [
        PoolRecord(name: "web", targets: [record("10.0.0.1:80", 1, "a"), record("10.0.0.2:80", 2, "b"),
                                          record("[2001:db8::1]:443", 1, nil)]),
        PoolRecord(name: "api", targets: [record("10.0.1.1:8080", 1, nil)]),
    ])
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStateFile(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Data(bytes: data, count: size)
    let state: StateFile
    do {
        state = try StateFile.decode(bytes, file: file)
    } catch let error as RegistryError {
        check(error.message.hasPrefix(file + ": "), "error without the file: \(error)")
        return 0
    } catch {
        fatalError("invariant: decode threw \(type(of: error)), not a RegistryError: \(error)")
    }

    guard let again = try? StateFile.decode(state.encoded(), file: file) else {
        fatalError("invariant: an accepted state file does not load once written back")
    }
    check(again == state, "written back, it loads as another state")

    let (merged, _) = state.overlay(on: base, nowMs: nowMs, nowUnixMs: nowUnixMs)
    check(merged.pools.map(\.name) == base.pools.map(\.name), "the pools changed")
    for (pool, configured) in zip(merged.pools, base.pools) {
        let addresses = pool.targets.map(\.spec.address)
        check(addresses.count <= TargetMask.capacity, "pool \(pool.name): \(addresses.count) targets")
        check(Set(addresses).count == addresses.count, "pool \(pool.name): a duplicate address")
        let names = pool.targets.compactMap(\.spec.name)
        check(Set(names).count == names.count, "pool \(pool.name): a duplicate name")
        for t in pool.targets {
            check((0...10_000).contains(t.spec.weight), "weight \(t.spec.weight)")
            if let d = t.drain {
                check(d.deadlineMs >= nowMs, "a drain deadline before now")
                check(d.startedMs == nowMs, "a drain started at \(d.startedMs)")
            }
            check((t.drain != nil) == t.state.isDraining, "state \(t.state) with drain \(String(describing: t.drain))")
        }
        let configuredAddresses = Set(configured.targets.map(\.spec.address))
        for r in pool.removedConfigTargets {
            check(configuredAddresses.contains(r), "removed \(r) is not a config target")
            check(!addresses.contains(r), "removed \(r) is still in the pool")
        }
    }

    let saved = StateFile(registry: merged, hashKey: state.hashKey, nowMs: nowMs, nowUnixMs: nowUnixMs)
    do {
        _ = try StateFile.decode(saved.encoded(), file: file)
    } catch {
        fatalError("invariant: the state the daemon saves does not load: \(error)")
    }
    return 0
}

extension TargetState {
    var isDraining: Bool {
        if case .draining = self { return true }
        return false
    }
}

@inline(__always)
func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { fatalError("invariant: \(message())") }
}
