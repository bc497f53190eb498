// libFuzzer target for the config loader (`make fuzz-config-loader`),
// built by SwiftPM (Fuzz/Package.swift) because the loader goes through
// Yams and libyaml.
//
// The input is a config file's bytes. Bytes that are not UTF-8 stop at
// `ConfigLoader.readFile`, so only UTF-8 text reaches the parser. Besides
// "never traps" (in Swift or in libyaml), it checks:
// - the loader throws nothing but `ConfigError`;
// - the error names the file, has a message, and its line and column,
//   when given, are inside the text (1-based; lines as YAML counts them,
//   and the line after a final line break counts);
// - a config that loads passes `validate` again, and loading its text
//   twice gives the same config (no hidden state between loads).
import StickyCore

let file = "fuzz.yaml"

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfigLoader(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard let text = String(validating: UnsafeBufferPointer(start: data, count: size), as: UTF8.self) else { return 0 }
    do {
        let config = try ConfigLoader.parse(text, file: file)
        do {
            try config.validate(file: file)
        } catch {
            fatalError("invariant: a loaded config fails validate: \(error)")
        }
        let again = try? ConfigLoader.parse(text, file: file)
        check(again == config, "loading the same text twice differs")
    } catch let error as ConfigError {
        check(error.file == file, "error names file '\(error.file)'")
        check(!error.message.isEmpty, "an empty message")
        let lines = yamlLineCount(Array(text.utf8))
        if let line = error.line {
            check(line >= 1 && line <= lines, "line \(line) of \(lines): \(error)")
        }
        if let column = error.column {
            check(error.line != nil, "a column without a line: \(error)")
            check(column >= 1, "column \(column): \(error)")
        }
    } catch {
        fatalError("invariant: the loader threw \(type(of: error)), not a ConfigError: \(error)")
    }
    return 0
}

/// Lines as YAML counts them: a line ends at LF, CR, CRLF, NEL, LS or PS
/// (counted here on the bytes, apart from the loader's own count).
func yamlLineCount(_ b: [UInt8]) -> Int {
    var lines = 1
    var i = 0
    while i < b.count {
        if b[i] == 0x0A || (b[i] == 0x0D && (i + 1 == b.count || b[i + 1] != 0x0A)) {
            lines += 1
        } else if b[i] == 0xC2, i + 1 < b.count, b[i + 1] == 0x85 {
            lines += 1
        } else if b[i] == 0xE2, i + 2 < b.count, b[i + 1] == 0x80, b[i + 2] == 0xA8 || b[i + 2] == 0xA9 {
            lines += 1
        }
        i += 1
    }
    return lines
}

@inline(__always)
func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { fatalError("invariant: \(message())") }
}
