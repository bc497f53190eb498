import XCTest
@testable import StickyCore

/// Seeded random sequences of connect (with connect failures), close, clock
/// advance, sweep, and target add, drain, down, maint, weight change and
/// delete, run against `AffinityBalancer` and against a small reference
/// model written from the semantics alone (dictionaries and loops, no
/// table). After every step the two must agree on every pin, every
/// target's connections and every counter.
///
/// The model predicts the exact target of every placement: it keeps its
/// own copy of the target set and slots, and walks the Maglev table as
/// documented (skip ineligible, spill past targets at their bound). The
/// table itself (tested in MaglevTests) is built once per change and handed
/// to the balancer too, as the control plane does.
final class ModelAffinityTests: XCTestCase {
    struct ModelSlot {
        var address: SocketAddress
        var weight: Int
        var state: TargetState
        var generation: UInt16
        var load = 0
        var present = true
    }

    struct ModelPin {
        var slot: Int
        var generation: UInt16
        var seenSec: UInt32
        var pinnedSec: UInt32
        var connections: Int
    }

    enum Outcome: Equatable {
        case hit(Int)
        case move(MoveReason, Int)
        case miss(Int)
        case none
    }

    struct Model {
        let config: AffinityConfig
        let key: SipKey
        var slots: [ModelSlot?] = Array(repeating: nil, count: 64)
        var specs: [TargetSpec] = []
        var maglev: MaglevTable
        var pins: [AffinityKey: ModelPin] = [:]
        var hits: UInt64 = 0
        var misses: UInt64 = 0
        var moves = MoveCounts()
        var noTarget: UInt64 = 0
        var evictions: UInt64 = 0
        var timeoutSec: UInt32 { UInt32((config.timeoutMs + 999) / 1000) }

        init(config: AffinityConfig) {
            self.config = config
            key = config.hashKey!
            maglev = MaglevTable(targets: [], key: key)
        }

        /// The slot rules: an address keeps its slot (present or deleted);
        /// a new address takes the lowest never-used slot, else the lowest
        /// deleted slot with no connections; a slot that changes address
        /// bumps its generation.
        mutating func update(_ new: [TargetSpec]) -> Bool {
            var taken = Set<Int>()
            var assignment: [Int] = []
            for spec in new {
                if let s = slots.firstIndex(where: { $0?.address == spec.address }) {
                    taken.insert(s)
                    assignment.append(s)
                } else {
                    assignment.append(-1)
                }
            }
            for k in new.indices where assignment[k] < 0 {
                guard let s = slots.firstIndex(where: { $0 == nil })
                    ?? slots.indices.first(where: { !taken.contains($0) && slots[$0]!.load == 0 }) else { return false }
                if slots[s] == nil {
                    slots[s] = ModelSlot(address: new[k].address, weight: new[k].weight, state: .ready, generation: 1)
                } else {
                    slots[s]!.generation &+= 1
                    slots[s]!.address = new[k].address
                }
                slots[s]!.present = false
                taken.insert(s)
                assignment[k] = s
            }
            for s in slots.indices where slots[s] != nil {
                let stays = taken.contains(s)
                if stays && !slots[s]!.present { slots[s]!.state = .ready }
                slots[s]!.present = stays
            }
            for (k, spec) in new.enumerated() { slots[assignment[k]]!.weight = spec.weight }
            specs = new
            maglev = MaglevTable(targets: new, key: key)
            return true
        }

        func expired(_ p: ModelPin, nowSec: UInt32) -> Bool {
            p.connections == 0 && nowSec &- (config.mode == .idle ? p.seenSec : p.pinnedSec) >= timeoutSec
        }

        func current(_ p: ModelPin) -> Bool {
            guard let s = slots[p.slot] else { return false }
            return s.present && s.generation == p.generation
        }

        func takesNew(_ s: Int, _ excluding: TargetMask) -> Bool {
            guard let t = slots[s], t.present, !excluding.contains(s) else { return false }
            return t.state == .ready && t.weight > 0
        }

        /// Maglev slot, then the following slots; the first target that
        /// takes new clients and is under its bound.
        func choose(_ hash: UInt64, excluding: TargetMask) -> Int? {
            let candidates = slots.indices.filter { takesNew($0, excluding) }
            guard !candidates.isEmpty else { return nil }
            let load = candidates.map { slots[$0]!.load }.reduce(0, +)
            let weight = candidates.map { slots[$0]!.weight }.reduce(0, +)
            func under(_ s: Int) -> Bool {
                guard let c = config.balanceFactor else { return true }
                let per = c * Double(load + 1) / Double(weight)
                return Double(slots[s]!.load) < max((per * Double(slots[s]!.weight)).rounded(.up), Double(AffinityBalancer.boundFloor))
            }
            var pos = maglev.slot(hash)
            for _ in 0..<AffinityBalancer.spillWalkMax {
                let address = maglev.addresses[Int(maglev.slots[pos])]
                let s = slots.firstIndex { $0?.address == address && $0!.present }!
                if candidates.contains(s) && under(s) { return s }
                pos = (pos + 1) % maglev.size
            }
            return candidates.min { a, b in
                let (la, wa) = (slots[a]!.load + 1, slots[a]!.weight)
                let (lb, wb) = (slots[b]!.load + 1, slots[b]!.weight)
                return la * wb < lb * wa || (la * wb == lb * wa && a < b)
            }
        }

        func predict(_ key: AffinityKey, nowSec: UInt32, excluding: TargetMask) -> Outcome {
            let hash = key.hash(self.key)
            if let p = pins[key], !expired(p, nowSec: nowSec) {
                let slot = slots[p.slot]!
                let reason: MoveReason?
                if !current(p) { reason = .targetRemoved }
                else if let r = slot.state.moveReason { reason = r }
                else if excluding.contains(p.slot) { reason = .connectFailed }
                else { reason = nil }
                guard let reason else { return .hit(p.slot) }
                return choose(hash, excluding: excluding).map { .move(reason, $0) } ?? .none
            }
            return choose(hash, excluding: excluding).map { .miss($0) } ?? .none
        }

        mutating func apply(_ outcome: Outcome, _ key: AffinityKey, nowSec: UInt32, recorded: Bool) {
            switch outcome {
            case .none:
                noTarget += 1
            case .hit(let s):
                hits += 1
                pins[key]!.connections += 1
                pins[key]!.seenSec = nowSec
                slots[s]!.load += 1
            case .move(let reason, let s):
                moves[reason] += 1
                pins[key]!.slot = s
                pins[key]!.generation = slots[s]!.generation
                pins[key]!.seenSec = nowSec
                pins[key]!.pinnedSec = nowSec
                pins[key]!.connections += 1
                slots[s]!.load += 1
            case .miss(let s):
                misses += 1
                pins[key] = recorded
                    ? ModelPin(slot: s, generation: slots[s]!.generation, seenSec: nowSec, pinnedSec: nowSec, connections: 1)
                    : nil
                slots[s]!.load += 1
            }
        }

        mutating func release(_ key: AffinityKey, slot: Int, recorded: Bool, refreshSec: UInt32?) {
            slots[slot]!.load -= 1
            guard recorded else { return }
            pins[key]!.connections -= 1
            if let sec = refreshSec { pins[key]!.seenSec = sec }
        }
    }

    struct Open {
        var client: IPAddress
        var placement: Placement
    }

    func runModel(seed: UInt64, steps: Int) {
        var rng = SplitMix64(seed: seed)
        let capacity = [24, 60, 1_000][Int(rng.next() % 3)]
        let config = AffinityConfig(
            mode: rng.next() % 2 == 0 ? .idle : .absolute,
            timeoutMs: [0, 5_000, 60_000, 600_500][Int(rng.next() % 4)],
            capacity: capacity,
            balanceFactor: [1.25, nil, 1.0, 2.0][Int(rng.next() % 4)],
            hashKey: SipKey(k0: rng.next(), k1: rng.next()))
        let context = "seed \(seed), capacity \(capacity), \(config.mode), timeout \(config.timeoutMs), c \(String(describing: config.balanceFactor))"
        let pool = (0..<12).map { SocketAddress("10.7.0.\($0 + 1):\(8000 + $0)")! }
        let clients = (0..<120).map { i -> IPAddress in
            i % 4 == 0 ? .v6(hi: 0x2001_0db8_0000_0000, lo: UInt64(i)) : .v4(0xC633_6400 + UInt32(i))
        }
        var model = Model(config: config)
        var specs = (0..<4).map { TargetSpec(address: pool[$0], weight: 1 + Int(rng.next() % 3)) }
        XCTAssertTrue(model.update(specs))
        var b = try! AffinityBalancer(targets: specs, config: config)
        var now: Millis = 1_000_000
        var open: [Open] = []
        var lastEvictions: UInt64 = 0

        func nowSec() -> UInt32 { AffinityTable.seconds(now) }
        func key(_ c: IPAddress) -> AffinityKey { AffinityKey(c, maskV4: 32, maskV6: 128) }

        /// One `place`, checked against the model's prediction.
        func place(_ c: IPAddress, excluding: TargetMask, step: Int) -> Placement? {
            let k = key(c)
            let expected = model.predict(k, nowSec: nowSec(), excluding: excluding)
            if case .miss = expected { model.pins[k] = nil } // an expired pin is gone for good
            let p = b.place(client: c, now: now, excluding: excluding)
            var recorded = true
            switch expected {
            case .none:
                XCTAssertNil(p, "step \(step): \(context)")
            case .hit(let s), .move(_, let s), .miss(let s):
                XCTAssertEqual(p.map { Int($0.target) }, s, "step \(step) \(expected): \(context)")
                if let p, case .miss = expected, p.entry < 0 { recorded = false }
                if let p, case .hit = expected { XCTAssertGreaterThanOrEqual(p.entry, 0) }
            }
            model.apply(expected, k, nowSec: nowSec(), recorded: recorded)
            return p
        }

        for step in 0..<steps {
            let roll = rng.next() % 100
            switch roll {
            case 0..<45: // a connection, maybe with connect failures
                let c = clients[Int(rng.next() % UInt64(clients.count))]
                var excluding = TargetMask()
                var p = place(c, excluding: excluding, step: step)
                while let q = p, rng.next() % 5 == 0 {
                    b.connectFailed(q, client: c, now: now)
                    model.release(key(c), slot: Int(q.target), recorded: q.entry >= 0, refreshSec: nil)
                    excluding.insert(Int(q.target))
                    p = place(c, excluding: excluding, step: step)
                }
                if let q = p {
                    b.opened(q, client: c, now: now)
                    open.append(Open(client: c, placement: q))
                }
            case 45..<75 where !open.isEmpty: // a close
                let o = open.remove(at: Int(rng.next() % UInt64(open.count)))
                b.closed(o.placement, client: o.client, now: now)
                model.release(key(o.client), slot: Int(o.placement.target), recorded: o.placement.entry >= 0,
                              refreshSec: config.mode == .idle ? nowSec() : nil)
            case 75..<85: // time passes
                let choices: [Millis] = [300, 1_000, 4_000, config.timeoutMs / 2, config.timeoutMs + 1_000]
                now += choices[Int(rng.next() % UInt64(choices.count))]
            case 85..<88:
                b.expire(now: now, slots: Int(rng.next() % 300))
            case 88..<94: // a state change
                let present = model.slots.indices.filter { model.slots[$0]?.present == true }
                let s = present[Int(rng.next() % UInt64(present.count))]
                let states: [TargetState] = [.ready, .ready, .draining(.strict), .draining(.sticky), .down, .maint]
                let state = states[Int(rng.next() % UInt64(states.count))]
                b.setState(target: s, state: state)
                model.slots[s]!.state = state
            case 94..<97 where specs.count < 8: // a new target
                let free = pool.filter { a in !specs.contains { $0.address == a } }
                specs.append(TargetSpec(address: free[Int(rng.next() % UInt64(free.count))], weight: 1 + Int(rng.next() % 3)))
                XCTAssertTrue(model.update(specs))
                XCTAssertNoThrow(try b.updateTargets(specs, maglev: model.maglev))
            case 97..<99 where specs.count > 1: // a target deleted
                specs.remove(at: Int(rng.next() % UInt64(specs.count)))
                XCTAssertTrue(model.update(specs))
                XCTAssertNoThrow(try b.updateTargets(specs, maglev: model.maglev))
            case 99: // a weight change (0 included)
                let k = Int(rng.next() % UInt64(specs.count))
                specs[k].weight = Int(rng.next() % 4)
                XCTAssertTrue(model.update(specs))
                XCTAssertNoThrow(try b.updateTargets(specs, maglev: model.maglev))
            default:
                break
            }

            // Invariants.
            let counters = b.counters
            XCTAssertLessThanOrEqual(counters.size, capacity)
            XCTAssertEqual(counters.hits, model.hits, "step \(step): \(context)")
            XCTAssertEqual(counters.misses, model.misses, "step \(step): \(context)")
            XCTAssertEqual(counters.moves, model.moves, "step \(step): \(context)")
            XCTAssertEqual(counters.noTarget, model.noTarget, "step \(step): \(context)")
            XCTAssertEqual(open.count, model.slots.compactMap { $0?.load }.reduce(0, +))
            for s in 0..<64 {
                XCTAssertEqual(b.openConnections(target: s), model.slots[s]?.load ?? 0, "step \(step) slot \(s)")
                XCTAssertEqual(b.state(ofTarget: s), model.slots[s].flatMap { $0.present ? $0.state : nil })
            }
            // Every live pin of the model is in the balancer, unless the
            // balancer evicted it to make room (never one with connections).
            var vanished: UInt64 = 0
            for (k, p) in model.pins {
                if model.expired(p, nowSec: nowSec()) {
                    model.pins[k] = nil
                    continue
                }
                guard let pin = b.pin(of: k.address, now: now) else {
                    XCTAssertEqual(p.connections, 0, "step \(step): a pin with connections vanished: \(context)")
                    vanished += 1
                    model.pins[k] = nil
                    continue
                }
                XCTAssertEqual(pin.target, p.slot, "step \(step)")
                XCTAssertEqual(pin.connections, p.connections, "step \(step)")
                XCTAssertEqual(pin.current, model.current(p), "step \(step)")
                XCTAssertEqual(pin.seenSec, p.seenSec, "step \(step)")
                XCTAssertEqual(pin.pinnedSec, p.pinnedSec, "step \(step)")
            }
            model.evictions += vanished
            XCTAssertEqual(counters.evictions - lastEvictions, vanished, "step \(step): \(context)")
            lastEvictions = counters.evictions
            // No pin in the balancer that the model does not know.
            if step % 50 == 0 {
                XCTAssertEqual(b.pins(now: now).count, model.pins.count, "step \(step): \(context)")
            }
            if testRun?.failureCount ?? 0 > 0 { return }
        }
        coverage.hits += b.counters.hits
        coverage.misses += b.counters.misses
        coverage.moves += b.counters.moves.total
        coverage.connectFailedMoves += b.counters.moves.connectFailed
        coverage.removedMoves += b.counters.moves.targetRemoved
        coverage.evictions += b.counters.evictions
        coverage.expirations += b.counters.expirations
        coverage.spills += b.counters.spills
        coverage.unrecorded += b.counters.unrecorded
        coverage.noTarget += b.counters.noTarget
        // Close everything: every count returns to zero.
        for o in open { b.closed(o.placement, client: o.client, now: now) }
        for s in 0..<64 { XCTAssertEqual(b.openConnections(target: s), 0) }
        XCTAssertTrue(b.pins(now: now).allSatisfy { $0.connections == 0 })
    }

    struct Coverage {
        var hits: UInt64 = 0, misses: UInt64 = 0, moves: UInt64 = 0, connectFailedMoves: UInt64 = 0
        var removedMoves: UInt64 = 0, evictions: UInt64 = 0, expirations: UInt64 = 0, spills: UInt64 = 0
        var unrecorded: UInt64 = 0, noTarget: UInt64 = 0
    }
    var coverage = Coverage()

    func testAgainstModel() {
        for seed: UInt64 in 1...12 { runModel(seed: seed, steps: 1_500) }
        // The sequences must reach every path, or the agreement proves little.
        print("model coverage: \(coverage)")
        XCTAssertGreaterThan(coverage.hits, 0)
        XCTAssertGreaterThan(coverage.misses, 0)
        XCTAssertGreaterThan(coverage.connectFailedMoves, 0)
        XCTAssertGreaterThan(coverage.removedMoves, 0)
        XCTAssertGreaterThan(coverage.moves, coverage.connectFailedMoves + coverage.removedMoves)
        XCTAssertGreaterThan(coverage.evictions, 0)
        XCTAssertGreaterThan(coverage.expirations, 0)
        XCTAssertGreaterThan(coverage.spills, 0)
        XCTAssertGreaterThan(coverage.noTarget, 0)
    }
}
