//! Which instruction set the hot kernels use, chosen once at run time.
//!
//! `Isa::best()` detects AVX-512F, then AVX2+FMA, else the portable path (plain Rust that the
//! compiler vectorises for the baseline target; this is what aarch64 builds run). Kernels take
//! an `Isa` argument in their `*_with` forms so tests and benches can force every path that
//! the machine supports; the plain forms use `Isa::best()`.
//!
//! Why not `-C target-cpu=native`: binaries must run on any x86-64, and `wide` without it
//! silently falls back to SSE without FMA. Runtime dispatch gives the fast path everywhere.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, vectorised by the compiler for the baseline target.
    Portable,
    /// 256-bit AVX2 with FMA.
    Avx2,
    /// 512-bit AVX-512F.
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU supports (detected once). `ALIGN_ISA=portable|avx2|avx512`
    /// caps it, for comparing paths end to end.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let detected = *Isa::available().last().expect("portable is always available");
            match std::env::var("ALIGN_ISA").ok().as_deref() {
                Some("portable") => Isa::Portable,
                Some("avx2") => detected.min(Isa::Avx2),
                _ => detected,
            }
        })
    }

    /// Every path this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512f") {
                    v.push(Isa::Avx512);
                }
            }
        }
        v
    }

    /// The best path at or below `self` that the CPU supports.
    pub fn supported(self) -> Isa {
        // cached: kernels call this on every invocation, many of them small
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        let detected = *DETECTED.get_or_init(|| *Isa::available().last().expect("portable is always available"));
        self.min(detected)
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512f",
        }
    }
}
