// libFuzzer target for the PROXY header parser (`make fuzz`).
//
// Compiled with the StickyCore files it needs into one module, so it can
// reach internal helpers too:
//   swiftc -sanitize=fuzzer,address -parse-as-library -O \
//     Fuzz/ProxyParser/FuzzProxyParser.swift Sources/StickyCore/Address.swift \
//     Sources/StickyCore/Proxy/*.swift -o .build/fuzz/proxy-parser
//
// Besides "never traps" (a trap is a crash libFuzzer saves), it checks:
// - a complete header claims no more than it was given, and at least the
//   shortest header there is, and at most `headerBytesMax`;
// - the byte before its end is missing, the parser asks for more;
// - answers are monotone: what a prefix already decided (complete or
//   invalid), the whole input decides the same way;
// - re-encoding what was parsed, in both versions, parses back to the same
//   addresses;
// - the allocation-free IPv6 text parser agrees with `IPAddress`'s.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzProxyParser(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    let result = ProxyHeader.parse(input)

    // Monotone: a prefix's decision stands.
    if size > 1 {
        let cut = size / 2
        switch ProxyHeader.parse(UnsafeRawBufferPointer(rebasing: input[0..<cut])) {
        case .needMore: break
        case .invalid(let e): check(result == .invalid(e), "prefix invalid(\(e)) but whole \(result)")
        case .complete(let h): check(result == .complete(h), "prefix complete but whole \(result)")
        }
    }

    if case .complete(let header) = result {
        check(header.consumed <= size, "consumed \(header.consumed) of \(size)")
        check(header.consumed >= 15, "a header shorter than PROXY UNKNOWN\\r\\n")
        check(header.consumed <= ProxyHeader.headerBytesMax, "consumed over headerBytesMax")
        let short = ProxyHeader.parse(UnsafeRawBufferPointer(rebasing: input[0..<(header.consumed - 1)]))
        check(short == .needMore, "one byte short gives \(short)")
        check((header.source == nil) == (header.destination == nil), "one address without the other")

        // Round trip through the encoder, in both versions.
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: ProxyHeader.encodedBytesMax, alignment: 1)
        defer { out.deallocate() }
        for version in ProxyVersion.allCases {
            let n = ProxyHeader.encode(version, source: header.source, destination: header.destination, into: out)
            check(n > 0, "encode \(version) did not fit")
            guard case .complete(let again) = ProxyHeader.parse(UnsafeRawBufferPointer(rebasing: out[0..<n])) else {
                fatalError("re-encoded \(version) header does not parse")
            }
            check(again.source == header.source, "\(version) source \(String(describing: again.source)) != \(String(describing: header.source))")
            check(again.destination == header.destination, "\(version) destination differs")
            check(again.consumed == n, "\(version) consumed \(again.consumed) of \(n)")
        }
    }

    // Differential: the byte parser and the String one agree on IPv6 text.
    if size <= 64, input.allSatisfy({ $0 < 0x80 }) {
        let text = String(decoding: input, as: UTF8.self)
        let mine = TextAddress.parseV6(input, 0, size)
        let theirs = IPAddress.parseV6(text[...])
        check(mine?.hi == theirs?.0 && mine?.lo == theirs?.1,
              "IPv6 text '\(text)': byte parser \(String(describing: mine)), IPAddress \(String(describing: theirs))")
    }
    return 0
}

@inline(__always)
func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { fatalError("invariant: \(message())") }
}
