fn main() {
    tune_allocator();
    std::process::exit(mongo_adls::cli::main());
}

/// glibc's malloc keeps memory the agent has freed: it raises its mmap
/// threshold after the first 8 MB batch buffer is freed, so later buffers
/// come from per-thread arenas (up to 8 per core) that rarely shrink. A
/// fixed threshold keeps batch-sized buffers in their own mappings,
/// returned to the system when freed, and two arenas are enough for a
/// runtime whose hot path is one task per component.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
