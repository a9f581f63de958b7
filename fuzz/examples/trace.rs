//! Runs engine scripts (the `engine` target's input) and prints what each peer was sent:
//! `cargo run --example trace -- fuzz/seeds/engine/*.txt` from `fuzz/`, to see what a seed or a
//! crash does.

fn main() {
    for path in std::env::args().skip(1) {
        eprintln!("== {path}");
        let data = std::fs::read(&path).expect("read the script");
        mcp_stream_fuzz::Driver::run_script_traced(&data, true);
    }
}
