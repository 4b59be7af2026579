// Recompile when a migration changes: `sqlx::migrate!` embeds the files at build time.
fn main() {
    println!("cargo:rerun-if-changed=../../sql");
}
