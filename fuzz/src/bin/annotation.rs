//! AFL++ entry point; the input handling is [`spire_rs_fuzz::annotation`].
fn main() {
    afl::fuzz!(|data: &[u8]| spire_rs_fuzz::annotation(data));
}
