// libFuzzer target for the admin session's line framer and command grammar
// (`make fuzz-admin-grammar`).
//
// Compiled with the StickyCore files it needs into one module (see the
// Makefile's FUZZ_SRC_admin-grammar), so it can read the framer's buffer.
//
// The input is what a client sends on the admin socket, in any pieces.
// Besides "never traps", it checks:
// - the framer never holds more than `AdminGrammar.lineBytesMax` bytes;
// - fed in pieces cut at points read from the input, it emits the same
//   events as fed whole; told to stop after k events, it emitted exactly
//   the first k;
// - every line parses or is refused with a message; a parsed command,
//   written back as the text `renderAdmin` makes (the canonical form of
//   docs/ADMIN.md), parses to the same request;
// - the values a command carries are within the bounds the grammar
//   promises, which are what the registry can take without overflowing (a
//   drain deadline is `now + timeout`).
//
// It runs no command: the registry needs most of StickyCore, and building
// that with the fuzzer's instrumentation would cost CI a minute.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAdminGrammar(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = expand(Array(UnsafeBufferPointer(start: data, count: size)))
    let size = input.count

    let whole = frame(input, cuts: { _ in size })
    let steered = frame(input, cuts: { at in 1 + Int(input[size - 1 - at % size] % 64) })
    check(steered.events == whole.events, "split feed: \(steered.events.count) events, whole: \(whole.events.count)")
    check(steered.maxBuffered <= AdminGrammar.lineBytesMax, "buffered \(steered.maxBuffered) bytes")
    check(whole.maxBuffered <= AdminGrammar.lineBytesMax, "buffered \(whole.maxBuffered) bytes")
    if whole.events.count > 1 {
        let k = 1 + size % (whole.events.count - 1)
        var f = AdminLineFramer()
        var got: [AdminLineFramer.Event] = []
        let going = f.feed(input[...]) { got.append($0); return got.count < k }
        check(!going && got == Array(whole.events.prefix(k)), "stop after \(k): \(got.count) events, going \(going)")
    }

    for case .line(let line) in whole.events {
        switch AdminGrammar.parse(line[...]) {
        case .failure(let e):
            check(!e.message.isEmpty, "an empty error message for '\(line)'")
        case .success(let request):
            let text = renderAdmin(request)
            guard case .success(let again) = AdminGrammar.parse(text[...]) else {
                fatalError("invariant: '\(line)' parsed, its rendering '\(text)' does not")
            }
            check(again == request, "'\(line)' -> '\(text)' parses to another request")
            checkBounds(request.command)
        }
    }
    return 0
}

/// Inputs are kept short (the Makefile's -max_len): a 4 KiB input of many
/// lines parses a hundred commands a run, and the fuzzer then makes a
/// thousand runs a second. An over-long line comes from an input that
/// starts with 0xFF: it becomes `lineBytesMax + 1` bytes of "x" followed
/// by the rest, so the rest decides where that line ends. The long line is
/// the same every time, so it adds no coverage of its own and such inputs
/// stay a small part of the corpus (each costs a dozen short ones).
func expand(_ input: [UInt8]) -> [UInt8] {
    guard let first = input.first, first == 0xFF else { return input }
    return [UInt8](repeating: UInt8(ascii: "x"), count: AdminGrammar.lineBytesMax + 1) + input.dropFirst()
}

/// Feeds `input` to a framer in pieces of `cuts(offset)` bytes; returns the
/// events and the most it ever buffered.
func frame(_ input: [UInt8], cuts: (Int) -> Int) -> (events: [AdminLineFramer.Event], maxBuffered: Int) {
    var f = AdminLineFramer()
    var events: [AdminLineFramer.Event] = []
    var maxBuffered = 0
    var at = 0
    while at < input.count {
        let end = min(input.count, at + max(1, cuts(at)))
        check(f.feed(input[at..<end]) { events.append($0); return true }, "the framer stopped on its own")
        maxBuffered = max(maxBuffered, f.input.count)
        at = end
    }
    return (events, maxBuffered)
}

/// Values the registry and the answers rely on: what the grammar promises.
func checkBounds(_ command: AdminCommand) {
    switch command {
    case .addTarget(_, _, let weight, _):
        check(weight.map { (0...AdminGrammar.weightMax).contains($0) } ?? true, "weight \(weight!)")
    case .setWeight(_, _, let weight):
        check((0...AdminGrammar.weightMax).contains(weight), "weight \(weight)")
    case .drain(_, _, _, let timeout):
        check(timeout.map { $0 > 0 && $0 < AdminGrammar.drainTimeoutCeilingMs } ?? true, "drain timeout \(timeout!) ms")
    case .showAffinity(_, _, let limit):
        check(limit.map { (1...AdminGrammar.affinityLimitMax).contains($0) } ?? true, "limit \(limit!)")
    case .upgrade(let binary):
        check(binary.map { $0.hasPrefix("/") } ?? true, "a relative upgrade binary")
    default:
        break
    }
}

/// The canonical text of a request: every optional part in the order the
/// synopsis gives, values in the forms the parser reads.
func renderAdmin(_ request: AdminRequest) -> String {
    var w: [String] = request.json ? ["json"] : []
    func target(_ verb: String, _ pool: String?, _ address: SocketAddress) {
        w += [verb, "target"]
        if let pool { w.append(pool) }
        w.append("\(address)")
    }
    switch request.command {
    case .help: w.append("help")
    case .quit: w.append("quit")
    case .showInfo: w += ["show", "info"]
    case .showStats: w += ["show", "stats"]
    case .showTargets(let pool): w += ["show", "targets"] + (pool.map { [$0] } ?? [])
    case let .addTarget(pool, address, weight, name):
        target("add", pool, address)
        if let weight { w += ["weight", "\(weight)"] }
        if let name { w += ["name", name] }
    case let .setWeight(pool, address, weight):
        target("set", pool, address)
        w += ["weight", "\(weight)"]
    case let .drain(pool, address, mode, timeout):
        target("drain", pool, address)
        if let mode { w += ["mode", mode.rawValue] }
        if let timeout { w += ["timeout", formatDuration(timeout)] }
    case let .ready(pool, address): target("ready", pool, address)
    case let .maint(pool, address): target("maint", pool, address)
    case let .remove(pool, address, force):
        target("remove", pool, address)
        if force { w.append("force") }
    case let .showAffinity(pool, client, limit):
        w += ["show", "affinity"]
        if let pool { w.append(pool) }
        if let client { w.append("\(client)") }
        if let limit { w += ["limit", "\(limit)"] }
    case let .clearAffinity(pool, scope):
        w += ["clear", "affinity"]
        if let pool { w.append(pool) }
        switch scope {
        case .all: w.append("all")
        case .target(let a): w += ["target", "\(a)"]
        case .client(let ip): w.append("\(ip)")
        }
    case .upgrade(let binary):
        w.append("upgrade")
        if let binary { w.append(binary) }
    case .showPeers: w += ["show", "peers"]
    case .withdraw: w.append("withdraw")
    case .announce: w.append("announce")
    }
    return w.joined(separator: " ")
}

@inline(__always)
func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { fatalError("invariant: \(message())") }
}
