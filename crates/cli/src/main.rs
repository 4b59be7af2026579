//! `reasonrec`: one binary, one subcommand per role. All logic lives in the library.

// jemalloc instead of the system allocator: the worker allocates and frees many short-lived
// buffers per task from several threads, and glibc's malloc spent measurably more CPU on them
// (BENCHMARKS.md, "Session 4").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    reasonrec_cli::main()
}
