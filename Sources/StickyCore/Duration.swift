// Text forms of durations and byte sizes, as written in the config file.
//
// Both parsers take one integer and one unit, with no sign, no fraction and
// no space: a config is read by people in a hurry, and "1.5m" or "5 s"
// invite more doubt than they save typing.

/// Milliseconds per unit. A bare number is refused: "timeout: 30" has cost
/// people hours when one reader meant seconds and another milliseconds.
private let durationUnits: [(suffix: String, millis: Millis)] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
]

/// Parses `250ms`, `5s`, `2m`, `3h` or `1d` into milliseconds.
/// Returns nil for a missing unit, a sign, a fraction, an empty string or a
/// value that does not fit in `Millis`. Zero is accepted here; whether zero
/// is allowed is the caller's rule.
public func parseDuration(_ text: String) -> Millis? {
    let digits = text.prefix { $0.isASCII && $0.isNumber }
    let unit = text.dropFirst(digits.count)
    guard !digits.isEmpty, let value = Millis(digits),
          let scale = durationUnits.first(where: { $0.suffix == unit })?.millis else { return nil }
    let (millis, overflow) = value.multipliedReportingOverflow(by: scale)
    return overflow ? nil : millis
}

/// Bytes per unit. Every unit is binary: a pipe or buffer size that is not a
/// multiple of the page size is never what anyone wants, so "64K" means 65536.
/// Lower-case single letters are accepted because `16k` is how people write it
/// on the command line; there is no milli-byte to confuse `m` with.
private let sizeUnits: [(suffix: String, bytes: Int)] = [
    ("", 1),
    ("K", 1 << 10), ("k", 1 << 10), ("KiB", 1 << 10),
    ("M", 1 << 20), ("m", 1 << 20), ("MiB", 1 << 20),
    ("G", 1 << 30), ("g", 1 << 30), ("GiB", 1 << 30),
]

/// Parses `65536`, `64KiB`, `64K`, `16k`, `1MiB`, `1M`, `1GiB` or `1G` into bytes.
/// Returns nil for an unknown unit (including the ambiguous `KB`), a sign, a
/// fraction, an empty string or a value that does not fit in `Int`.
public func parseByteSize(_ text: String) -> Int? {
    let digits = text.prefix { $0.isASCII && $0.isNumber }
    let unit = text.dropFirst(digits.count)
    guard !digits.isEmpty, let value = Int(digits),
          let scale = sizeUnits.first(where: { $0.suffix == unit })?.bytes else { return nil }
    let (bytes, overflow) = value.multipliedReportingOverflow(by: scale)
    return overflow ? nil : bytes
}

/// The shortest exact text for a duration, so error messages echo limits in
/// the same form the user writes them ("30d", not "2592000000ms").
public func formatDuration(_ millis: Millis) -> String {
    for (suffix, scale) in durationUnits.reversed() where millis != 0 && millis % scale == 0 {
        return "\(millis / scale)\(suffix)"
    }
    return "\(millis)ms"
}

/// The shortest exact text for a size in the config's own units ("64KiB").
public func formatByteSize(_ bytes: Int) -> String {
    for (suffix, scale) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
    where bytes != 0 && bytes % scale == 0 {
        return "\(bytes / scale)\(suffix)"
    }
    return "\(bytes)"
}
