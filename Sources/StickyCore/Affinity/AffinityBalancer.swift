/// What the affinity engine has counted. Monotonic except `size`.
public struct AffinityCounters: Sendable, Equatable {
    /// Pinned clients sent to their target.
    public var hits: UInt64 = 0
    /// Clients with no live entry (new, expired or evicted), placed by
    /// Maglev.
    public var misses: UInt64 = 0
    /// Pinned clients re-pinned to another target, by reason.
    public var moves = MoveCounts()
    /// Placements where bounded load passed over the Maglev choice.
    public var spills: UInt64 = 0
    /// Entries that lapsed and were removed or reused.
    public var expirations: UInt64 = 0
    /// Live entries dropped to make room.
    public var evictions: UInt64 = 0
    /// Placements not recorded because every candidate entry had open
    /// connections (the client got a target but no affinity).
    public var unrecorded: UInt64 = 0
    /// `place` calls that found no eligible target.
    public var noTarget: UInt64 = 0
    /// `connectFailed` calls.
    public var connectFailures: UInt64 = 0
    /// Placements (new or pinned clients) on a target health has down,
    /// made because its pool is in panic mode.
    public var panicPlacements: UInt64 = 0
    /// Entries in the table now.
    public var size: Int = 0

    public init() {}
}

/// A client's pin, for dumps, the admin socket and tests.
public struct AffinityPin: Sendable, Equatable {
    public var key: AffinityKey
    public var target: Int
    public var address: SocketAddress?
    /// False when the target slot has since been given to another target
    /// or the target was deleted: the client is re-pinned on its next
    /// connection.
    public var current: Bool
    public var connections: Int
    public var seenSec: UInt32
    public var pinnedSec: UInt32
}

/// A target slot as the control plane sees it.
public struct AffinityTargetInfo: Sendable, Equatable {
    /// The slot: `Placement.target` for connections placed here.
    public var index: Int
    public var address: SocketAddress
    public var weight: Int
    public var state: TargetState
    /// Connections placed here and not yet closed or failed.
    public var connections: Int
    /// False for a deleted target whose connections are still closing.
    public var present: Bool
}

/// A target set the balancer cannot take.
public enum AffinityTargetsError: Error, Sendable, Equatable {
    /// More targets, counting deleted ones whose connections are still
    /// open, than `AffinityBalancer.maxTargets` slots.
    case tooManyTargets(Int)
    case duplicateAddress(SocketAddress)
    case negativeWeight(SocketAddress)
    /// The Maglev table was built from other targets, weights or key.
    case maglevMismatch
}

/// The affinity placement policy: a keyed client-IP table with expiry and
/// a bound, in front of weighted Maglev with bounded load.
///
/// One instance per worker thread and pool (the reuseport BPF steers each
/// client IP to one worker, so each worker owns its shard of clients);
/// nothing here locks, and `place`, `opened`, `connectFailed` and `closed`
/// allocate nothing.
///
/// Target indices: `Placement.target` is a *slot*, stable for as long as
/// the target is in the pool, so connections survive `updateTargets`. A
/// deleted target keeps its slot until its last connection is closed. Use
/// `address(ofTarget:)` to connect.
///
/// Connection accounting starts at `place`: an entry whose connect is in
/// flight is held like one with an open connection. `connectFailed` and
/// `closed` give it back; `opened` counts nothing.
///
/// Bounded load (Mirrokni, Thorup, Zadimoghaddam): with factor c, a target
/// of weight w may take a new client while its connections are below
/// max(ceil(c × (L + 1) × w / W), `boundFloor`), where L is the
/// connections on the targets that take new clients and W their weight. When the Maglev choice is at
/// its bound, the walk goes on to the *next Maglev slot* (slot + 1, + 2,
/// ...) and takes the first eligible target under its bound there. Walking
/// slots rather than rehashing keeps the second choice a function of the
/// client, spread like the table itself, and costs no hash. The bounds add
/// up to more than L, so some target is always under its bound; if the
/// walk gives up (`spillWalkMax` slots), the least loaded target by weight
/// is taken. Pinned clients are never spilled: affinity wins over balance.
///
/// Ineligible targets are walked past the same way, so a Maglev table only
/// needs a rebuild when targets or weights change, not on each state change.
public struct AffinityBalancer: PlacementPolicy, Sendable {
    public static let maxTargets = TargetMask.capacity
    /// Most Maglev slots a spill looks at before it falls back to the least
    /// loaded target.
    public static let spillWalkMax = 256
    /// The least a target's bounded-load limit ever is, in connections. The
    /// bound is there to stop a hot target from taking more than its share;
    /// a target with a handful of connections is not hot, and without a
    /// floor the bound at low load is 1 (⌈1.25 × 1 ÷ 3⌉), so placement
    /// would hang on momentary load and two instances sharing a key would
    /// disagree (issue 12). 4 keeps the bound exactly where it was once a
    /// pool of 3 holds 9 connections and a pool of 4 holds 12: the spread
    /// of the rollout tests (12 clients on 3 pods, max ≤ 1.25 × the mean =
    /// 5) is unchanged, and at most 4 connections can sit on a target
    /// before the bound looks at it.
    public static let boundFloor = 4

    public internal(set) var config: AffinityConfig
    public let hashKey: SipKey

    @usableFromInline var table: AffinityTable
    @usableFromInline var maglev: MaglevTable
    /// Maglev target index to slot.
    @usableFromInline var slotOfMaglevIndex: [UInt8] = []

    // Per slot, `maxTargets` long from the start so slots never move.
    @usableFromInline var addresses: [SocketAddress?]
    @usableFromInline var weights: [Int]
    @usableFromInline var states: [TargetState]
    @usableFromInline var generations: [UInt16]
    @usableFromInline var loads: [Int]
    /// Per slot, age moves in flight: connections told to leave it (until
    /// they close), and clients whose pins moved to it (until their next
    /// connection lands there, `AgeMoveInFlight`). An age check subtracts the first from the source and adds the
    /// second to the destination, so a burst of checks sheds only what is
    /// over the bound and does not overfill the target it sheds to. Kept in
    /// `sharedLoads` instead when workers share loads.
    @usableFromInline var leavingForAge: [Int]
    @usableFromInline var arrivingForAge: [Int]
    /// Clients between connections: their age-moved connection closed and
    /// their next one has not opened (`AgeMoveInFlight`).
    @usableFromInline var inTransitForAge = 0
    /// This balancer's age moves until both ends are settled; at most
    /// `ageMovesMax`, reserved up front so the data path never allocates.
    @usableFromInline var ageMoves: [AgeMoveInFlight] = []
    /// Slots holding a target of the pool (deleted ones are clear).
    @usableFromInline var present: UInt64 = 0
    /// Slots whose pinned clients may stay: present, and ready or sticky
    /// draining.
    @usableFromInline var keepsPinned: UInt64 = 0
    /// Slots that take new clients: present, ready, positive weight.
    @usableFromInline var takesNew: UInt64 = 0
    /// Connections and weight over `takesNew`, kept up to date so the
    /// bounded-load check costs no loop.
    @usableFromInline var newLoad = 0
    @usableFromInline var newWeight = 0
    /// Slots of targets health has down that panic mode put back in
    /// service (their state here is the operator's): only for counting
    /// `panicPlacements`. Set by `setPanicked`.
    @usableFromInline var panicked: UInt64 = 0

    @usableFromInline var counts = AffinityCounters()

    /// Pool-wide loads for the bounded-load check when several workers
    /// share a pool; nil when this balancer sees every connection itself.
    public var sharedLoads: SharedLoads?
    /// `choose` took the shared count for the target it returned; the
    /// `addLoad` that follows every successful choose consumes this.
    @usableFromInline var sharedReserved = false

    // MARK: setup (control plane)

    /// A balancer over `targets`, all ready. Builds the Maglev table here;
    /// use `init(targets:config:maglev:)` to share one already built.
    public init(targets: [TargetSpec], config: AffinityConfig) throws(AffinityTargetsError) {
        try AffinityBalancer.check(targets)
        let key = config.hashKey ?? SipKey.random()
        try self.init(targets: targets, config: config, maglev: MaglevTable(targets: targets, key: key))
    }

    /// Refuses duplicate addresses and negative weights (before a Maglev
    /// table is built from them: it asserts the addresses are distinct).
    static func check(_ specs: [TargetSpec]) throws(AffinityTargetsError) {
        var seen = Set<SocketAddress>()
        for spec in specs {
            guard seen.insert(spec.address).inserted else { throw .duplicateAddress(spec.address) }
            guard spec.weight >= 0 else { throw .negativeWeight(spec.address) }
        }
    }

    /// A balancer over `targets`, all ready, with a Maglev table built from
    /// the same targets and with `config.hashKey` (or, when that is nil,
    /// with the key this balancer should use).
    public init(targets: [TargetSpec], config: AffinityConfig, maglev: MaglevTable) throws(AffinityTargetsError) {
        precondition(config.validate().isEmpty, "affinity config must be validated first")
        self.config = config
        hashKey = config.hashKey ?? maglev.key
        table = AffinityTable(capacity: config.capacity, mode: config.mode, timeoutMs: config.timeoutMs, hashKey: hashKey)
        self.maglev = MaglevTable(targets: [], key: hashKey)
        let n = AffinityBalancer.maxTargets
        addresses = Array(repeating: nil, count: n)
        weights = Array(repeating: 0, count: n)
        states = Array(repeating: .ready, count: n)
        generations = Array(repeating: 0, count: n)
        loads = Array(repeating: 0, count: n)
        leavingForAge = Array(repeating: 0, count: n)
        arrivingForAge = Array(repeating: 0, count: n)
        ageMoves.reserveCapacity(AffinityBalancer.ageMovesMax)
        try updateTargets(targets, maglev: maglev)
    }

    /// Replaces the target set. Targets are matched by address: those that
    /// stay keep their slot, state, connections and pinned clients; new
    /// ones get a free slot in `newTargetState`; those left out are
    /// deleted (their clients are re-pinned on their next connection,
    /// counted as `targetRemoved`, and their slot is kept until their
    /// connections close). A deleted address that comes back while its old
    /// slot is still free gets that slot back, with its pins.
    ///
    /// `maglev` must be built from exactly `specs` (same order) with this
    /// balancer's key: build it on the control plane and hand the same
    /// value to every worker.
    public mutating func updateTargets(
        _ specs: [TargetSpec], maglev: MaglevTable, newTargetState: TargetState = .ready
    ) throws(AffinityTargetsError) {
        guard maglev.key == hashKey,
              maglev.addresses == specs.map(\.address),
              maglev.weights == specs.map(\.weight) else { throw .maglevMismatch }
        try AffinityBalancer.check(specs)
        // Plan the slots first, so a refused set changes nothing.
        var plannedAddresses = addresses
        var slotOfSpec = [Int](repeating: -1, count: specs.count)
        var keep: UInt64 = 0
        for (k, spec) in specs.enumerated() {
            if let s = plannedAddresses.firstIndex(of: spec.address) {
                slotOfSpec[k] = s
                keep |= 1 << UInt64(s)
            }
        }
        for (k, spec) in specs.enumerated() where slotOfSpec[k] < 0 {
            // A never-used slot first, so that deleted targets' slots (and
            // their pins) stay available to them for longer; then a deleted
            // target's slot with no connections left.
            let free = plannedAddresses.indices.first { plannedAddresses[$0] == nil }
                ?? plannedAddresses.indices.first { keep & 1 << UInt64($0) == 0 && loads[$0] == 0 }
            guard let s = free else {
                throw .tooManyTargets(specs.count + (present & ~keep).nonzeroBitCount)
            }
            plannedAddresses[s] = spec.address
            slotOfSpec[k] = s
            keep |= 1 << UInt64(s)
        }
        // Apply.
        for (k, spec) in specs.enumerated() {
            let s = slotOfSpec[k]
            if addresses[s] != spec.address {
                // A new target in the slot is not the panicked one.
                panicked &= ~(1 << UInt64(s))
                // The slot changes hands: old pins to it must read as stale.
                assert(loads[s] == 0, "a slot changed hands with connections counted")
                generations[s] &+= 1
                addresses[s] = spec.address
            }
            if present & 1 << UInt64(s) == 0 { states[s] = newTargetState }
            weights[s] = spec.weight
        }
        present = keep
        panicked &= keep
        self.maglev = maglev
        slotOfMaglevIndex = slotOfSpec.map { UInt8($0) }
        recomputeEligibility()
    }

    /// Replaces the target set, building the Maglev table here. For tests
    /// and single-worker use; workers should share one table built once.
    public mutating func updateTargets(_ specs: [TargetSpec], newTargetState: TargetState = .ready) throws(AffinityTargetsError) {
        try AffinityBalancer.check(specs)
        try updateTargets(specs, maglev: MaglevTable(targets: specs, key: hashKey), newTargetState: newTargetState)
    }

    /// Sets a target's state. Clients pinned to it are re-pinned (lazily,
    /// on their next connection) only if the new state refuses them; a
    /// target set back to ready does not get its old clients back, since
    /// they were re-pinned elsewhere.
    public mutating func setState(target: Int, state: TargetState) {
        precondition(target >= 0 && target < AffinityBalancer.maxTargets, "target slot out of range")
        precondition(present & 1 << UInt64(target) != 0, "setState on a target not in the pool")
        states[target] = state
        recomputeEligibility()
    }

    /// Sets the state of the target at `address`; false if there is none.
    @discardableResult
    public mutating func setState(address: SocketAddress, state: TargetState) -> Bool {
        guard let s = targetIndex(of: address) else { return false }
        setState(target: s, state: state)
        return true
    }

    /// The targets health has down that panic mode put back in service
    /// (empty when the pool is not in panic); unknown addresses are
    /// skipped. For `panicPlacements` only: eligibility follows the states.
    public mutating func setPanicked(_ targets: [SocketAddress]) {
        panicked = 0
        for a in targets {
            if let s = targetIndex(of: a) { panicked |= 1 << UInt64(s) }
        }
    }

    @usableFromInline mutating func recomputeEligibility() {
        keepsPinned = 0
        takesNew = 0
        newLoad = 0
        newWeight = 0
        for s in 0..<AffinityBalancer.maxTargets where present & 1 << UInt64(s) != 0 {
            if states[s].acceptsPinned { keepsPinned |= 1 << UInt64(s) }
            if states[s] == .ready && weights[s] > 0 {
                takesNew |= 1 << UInt64(s)
                newLoad += loads[s]
                newWeight += weights[s]
            }
        }
    }

    // MARK: queries (control plane)

    /// The slot of the target at `address`, if it is in the pool.
    public func targetIndex(of address: SocketAddress) -> Int? {
        guard let s = addresses.firstIndex(of: address), present & 1 << UInt64(s) != 0 else { return nil }
        return s
    }

    /// The address to connect to for `Placement.target`. Also answers for
    /// a deleted target whose connections are still open.
    public func address(ofTarget target: Int) -> SocketAddress? {
        guard target >= 0 && target < AffinityBalancer.maxTargets else { return nil }
        return addresses[target]
    }

    public func state(ofTarget target: Int) -> TargetState? {
        guard target >= 0 && target < AffinityBalancer.maxTargets, present & 1 << UInt64(target) != 0 else { return nil }
        return states[target]
    }

    /// Connections placed on the target and not yet closed or failed:
    /// what `drain --wait` waits on.
    public func openConnections(target: Int) -> Int {
        guard target >= 0 && target < AffinityBalancer.maxTargets else { return 0 }
        return loads[target]
    }

    /// The slot's generation, bumped each time the slot gets a new address.
    public func generation(ofTarget target: Int) -> UInt16 {
        generations[target]
    }

    /// Every target slot in use, present or deleted-with-connections.
    public var targets: [AffinityTargetInfo] {
        (0..<AffinityBalancer.maxTargets).compactMap { s in
            guard let a = addresses[s] else { return nil }
            let isPresent = present & 1 << UInt64(s) != 0
            guard isPresent || loads[s] > 0 else { return nil }
            return AffinityTargetInfo(index: s, address: a, weight: weights[s], state: states[s],
                                      connections: loads[s], present: isPresent)
        }
    }

    public var counters: AffinityCounters {
        var c = counts
        c.expirations = table.expirations
        c.evictions = table.evictions
        c.unrecorded = table.insertFailures
        c.size = table.count
        return c
    }

    /// Bytes per entry of capacity, slack and tags included.
    public var tableBytesPerEntry: Double { table.bytesPerEntry }

    /// The live pin of `client`, if any (expired entries are not pins).
    public func pin(of client: IPAddress, now: Millis) -> AffinityPin? {
        let key = AffinityKey(client, maskV4: config.maskV4, maskV6: config.maskV6)
        let slot = table.find(key, hash: key.hash(hashKey))
        guard slot >= 0 else { return nil }
        let e = table[slot]
        guard !table.isExpired(e, nowSec: AffinityTable.seconds(now)) else { return nil }
        return pinInfo(e)
    }

    /// Every live pin. Cold path: walks the whole table and allocates.
    public func pins(now: Millis) -> [AffinityPin] {
        var out: [AffinityPin] = []
        let nowSec = AffinityTable.seconds(now)
        table.forEach { _, e in
            if !table.isExpired(e, nowSec: nowSec) { out.append(pinInfo(e)) }
        }
        return out
    }

    func pinInfo(_ e: AffinityEntry) -> AffinityPin {
        let t = Int(e.target)
        let current = present & 1 << UInt64(t) != 0 && generations[t] == e.generation
        return AffinityPin(key: e.key, target: t, address: current ? addresses[t] : nil, current: current,
                           connections: Int(e.connections), seenSec: e.seenSec, pinnedSec: e.pinnedSec)
    }

    /// Removes lapsed entries among the next `slots` table slots; returns
    /// how many. Call it from a timer with a budget that covers the table
    /// within a fraction of the timeout (e.g. capacity / 100 every 100 ms).
    @discardableResult
    public mutating func expire(now: Millis, slots: Int) -> Int {
        table.sweep(nowSec: AffinityTable.seconds(now), slots: slots)
    }

    // MARK: data path

    public mutating func place(client: IPAddress, now: Millis, excluding: TargetMask) -> Placement? {
        let placement = placeClient(client, now: now, excluding: excluding)
        if panicked != 0, let p = placement, panicked & 1 << UInt64(p.target) != 0 { counts.panicPlacements &+= 1 }
        return placement
    }

    @inline(__always)
    mutating func placeClient(_ client: IPAddress, now: Millis, excluding: TargetMask) -> Placement? {
        let key = AffinityKey(client, maskV4: config.maskV4, maskV6: config.maskV6)
        let hash = key.hash(hashKey)
        let nowSec = AffinityTable.seconds(now)
        if !ageMoves.isEmpty { settleOverdueArrivals(nowSec: nowSec) }
        let slot = table.find(key, hash: hash)
        if slot >= 0 {
            let e = table[slot]
            if !table.isExpired(e, nowSec: nowSec) {
                let t = Int(e.target)
                let bit: UInt64 = 1 << UInt64(t)
                if keepsPinned & bit != 0 && excluding.bits & bit == 0 && generations[t] == e.generation {
                    counts.hits &+= 1
                    table.withEntry(slot) {
                        $0.connections += 1
                        $0.seenSec = nowSec
                    }
                    addLoad(t, 1)
                    if !ageMoves.isEmpty { arrived(entry: slot, at: t) }
                    return Placement(target: Int32(t), entry: slot, kind: .hit)
                }
                return repin(slot: slot, hash: hash, nowSec: nowSec, excluding: excluding)
            }
            // Lapsed: the client starts afresh in the same slot.
            let spills = counts.spills
            guard let t = choose(hash: hash, excluding: excluding) else {
                counts.noTarget &+= 1
                return nil
            }
            counts.misses &+= 1
            table.noteExpired()
            table[slot] = AffinityEntry(keyHi: key.hi, keyLo: key.lo, seenSec: nowSec, pinnedSec: nowSec,
                                        connections: 1, target: UInt16(t), generation: generations[t])
            addLoad(t, 1)
            return Placement(target: Int32(t), entry: slot, kind: counts.spills != spills ? .spill : .miss)
        }
        let spills = counts.spills
        guard let t = choose(hash: hash, excluding: excluding) else {
            counts.noTarget &+= 1
            return nil
        }
        counts.misses &+= 1
        let newSlot = table.insert(key, hash: hash, target: UInt16(t), generation: generations[t], now: now)
        addLoad(t, 1)
        return Placement(target: Int32(t), entry: newSlot, kind: counts.spills != spills ? .spill : .miss)
    }

    /// A pinned client whose target it may no longer use: pin it to a new
    /// one, counting why. Cold next to a hit.
    @usableFromInline mutating func repin(slot: Int32, hash: UInt64, nowSec: UInt32, excluding: TargetMask) -> Placement? {
        let e = table[slot]
        let old = Int(e.target)
        let reason: MoveReason
        if present & 1 << UInt64(old) == 0 || generations[old] != e.generation {
            reason = .targetRemoved
        } else if let stateReason = states[old].moveReason {
            reason = stateReason
        } else {
            assert(excluding.contains(old), "a pinned client moved with no reason")
            reason = .connectFailed
        }
        guard let t = choose(hash: hash, excluding: excluding) else {
            // Nowhere to go: keep the pin, so the client is not moved
            // should its target come back first.
            counts.noTarget &+= 1
            return nil
        }
        counts.moves[reason] &+= 1
        table[slot].target = UInt16(t)
        table[slot].generation = generations[t]
        table[slot].pinnedSec = nowSec
        table[slot].seenSec = nowSec
        table[slot].connections += 1
        addLoad(t, 1)
        var p = Placement(target: Int32(t), entry: slot, kind: .repin)
        p.moveReason = reason
        return p
    }

    /// The target for a client with no usable pin: its Maglev slot, then
    /// the following slots, skipping targets that take no new clients, are
    /// excluded, or are at their bounded-load limit.
    @usableFromInline mutating func choose(hash: UInt64, excluding: TargetMask) -> Int? {
        let candidates = takesNew & ~excluding.bits
        guard candidates != 0, maglev.size > 0 else { return nil }
        let (load, weight) = loadAndWeight(over: candidates)
        // c × (L + 1) / W: a target's bound is this times its weight.
        let perWeight = config.balanceFactor.map { $0 * Double(load + 1) / Double(weight) }
        var pos = maglev.slot(hash)
        var passedOver = false
        for _ in 0..<AffinityBalancer.spillWalkMax {
            let t = maglevTarget(pos)
            if candidates & 1 << UInt64(t) != 0 {
                if let per = perWeight, let shared = sharedLoads {
                    // Pool-wide: take the place atomically, or walk on.
                    if shared.reserve(t, under: bound(per, t)) {
                        sharedReserved = true
                        if passedOver { counts.spills &+= 1 }
                        return t
                    }
                    passedOver = true
                } else if let per = perWeight, loads[t] >= bound(per, t) {
                    passedOver = true
                } else {
                    if passedOver { counts.spills &+= 1 }
                    return t
                }
            }
            pos = nextMaglevSlot(pos)
        }
        if passedOver { counts.spills &+= 1 }
        return leastLoaded(candidates)
    }

    /// Target `t`'s bounded-load limit in connections, given c × (L + 1) / W:
    /// ⌈that × its weight⌉, but never below `boundFloor`.
    @inline(__always)
    func bound(_ perWeight: Double, _ t: Int) -> Int {
        max(Int((perWeight * Double(weights[t])).rounded(.up)), AffinityBalancer.boundFloor)
    }

    /// Connections and weight over the targets in `mask`: the kept totals
    /// when the mask is the targets that take new clients and this
    /// balancer sees every connection; otherwise (pool-wide shared counts,
    /// or targets excluded after a failed connect) a loop over at most 64
    /// bits.
    func loadAndWeight(over mask: UInt64) -> (load: Int, weight: Int) {
        if sharedLoads == nil && mask == takesNew { return (newLoad, newWeight) }
        var load = 0
        var weight = 0
        var m = mask
        while m != 0 {
            let s = m.trailingZeroBitCount
            load += self.load(of: s)
            weight += weights[s]
            m &= m &- 1
        }
        return (load, weight)
    }

    /// A target's connections as bounded load sees them: pool-wide when
    /// workers share a pool.
    @inline(__always)
    func load(of target: Int) -> Int {
        sharedLoads?[target] ?? loads[target]
    }

    /// The target at a Maglev table position.
    @inline(__always)
    func maglevTarget(_ pos: Int) -> Int {
        Int(slotOfMaglevIndex[Int(maglev.slots[pos])])
    }

    /// The next position of a walk: a client's second, third... choices.
    @inline(__always)
    func nextMaglevSlot(_ pos: Int) -> Int {
        pos + 1 == maglev.size ? 0 : pos + 1
    }

    /// The target in `candidates` (not empty) with the fewest connections
    /// per weight, counting the one about to be placed: where a walk that
    /// found no target under its bound falls back to.
    func leastLoaded(_ candidates: UInt64) -> Int {
        var best = -1
        var m = candidates
        while m != 0 {
            let s = m.trailingZeroBitCount
            if best < 0 || (load(of: s) + 1) * weights[best] < (load(of: best) + 1) * weights[s] { best = s }
            m &= m &- 1
        }
        return best
    }

    @inlinable @inline(__always)
    mutating func addLoad(_ target: Int, _ delta: Int) {
        loads[target] += delta
        // A placement whose shared count `choose` already took (reserve)
        // must not count it twice.
        if sharedReserved && delta > 0 {
            sharedReserved = false
        } else {
            sharedLoads?.add(target, delta)
        }
        if takesNew & 1 << UInt64(target) != 0 { newLoad += delta }
    }

    /// Nothing to count: `place` already counted the connection.
    public mutating func opened(_ placement: Placement, client: IPAddress, now: Millis) {}

    /// Gives back what `place` counted. The data path then calls `place`
    /// again with the target excluded, which re-pins the client
    /// (`connectFailed` move) if it was pinned there. Marking the target
    /// down is the health checker's call, not this one's.
    public mutating func connectFailed(_ placement: Placement, client: IPAddress, now: Millis) {
        counts.connectFailures &+= 1
        release(placement, client: client, refreshSec: nil, nowSec: nil)
    }

    public mutating func closed(_ placement: Placement, client: IPAddress, now: Millis) {
        // Idle expiry counts from the last activity, and a close is one:
        // otherwise a client whose one connection lasted longer than the
        // timeout would lose its pin the moment it closed.
        let nowSec = AffinityTable.seconds(now)
        release(placement, client: client, refreshSec: config.mode == .idle ? nowSec : nil, nowSec: nowSec)
    }

    @usableFromInline mutating func release(_ placement: Placement, client: IPAddress, refreshSec: UInt32?, nowSec: UInt32?) {
        let t = Int(placement.target)
        precondition(t >= 0 && t < AffinityBalancer.maxTargets, "placement target out of range")
        precondition(loads[t] > 0, "close of a connection not counted on its target")
        addLoad(t, -1)
        if placement.leavingForAge { leftForAge(placement, nowSec: nowSec ?? 0) }
        guard placement.entry >= 0 else { return }
        let key = AffinityKey(client, maskV4: config.maskV4, maskV6: config.maskV6)
        let e = table[placement.entry]
        // An entry with connections is never evicted or reused, so the
        // handle must still name this client's entry.
        precondition(e.keyHi == key.hi && e.keyLo == key.lo, "placement entry handle does not match the client")
        precondition(e.connections > 0, "close of an entry with no connections")
        table.withEntry(placement.entry) {
            $0.connections -= 1
            if let sec = refreshSec { $0.seenSec = sec }
        }
    }
}
