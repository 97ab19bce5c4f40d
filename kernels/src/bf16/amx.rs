//! AMX-BF16 micro-kernel: a 32 x 32 block of C in four 16 x 16 f32 tiles.
//!
//! AMX is a tile unit beside the vector units: eight tile registers (here each 16 rows of 64
//! bytes), loaded and stored with `tileloadd` / `tilestored`, and `tdpbf16ps`, which adds the
//! product of a 16 x 32 bf16 tile (A) and a 32 x 16 bf16 tile (B, stored as 16 rows of 16
//! pairs) to a 16 x 16 f32 tile: 16 * 16 * 32 multiply-adds per instruction. Tiles 0-3 hold
//! C, 4-5 the two A tiles of a step of K, 6-7 the two B tiles.
//!
//! Linux hands out AMX's 8 KB of tile state only to processes that ask for it
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); [`available`] asks once. Rust has
//! no stable AMX intrinsics, so the instructions are inline assembly; the compiler never
//! allocates tile registers, so their contents survive between the `asm!` blocks.

use super::gemm::APanel;
use std::arch::asm;
use std::sync::OnceLock;

const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
const XFEATURE_XTILEDATA: libc::c_long = 18;

/// Whether this CPU has AMX-TILE and AMX-BF16 and the kernel lets this process use them.
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // CPUID leaf 7, sub-leaf 0: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
        let leaf0 = std::arch::x86_64::__cpuid(0);
        if leaf0.eax < 7 {
            return false;
        }
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let has = (leaf7.edx >> 22) & 1 == 1 && (leaf7.edx >> 24) & 1 == 1;
        // SAFETY: a plain system call with integer arguments.
        has && unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0
    })
}

/// The tile configuration (palette 1): eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_16x64() -> TileConfig {
        let mut cfg = [0u8; 64];
        cfg[0] = 1; // palette
        for t in 0..8 {
            cfg[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
            cfg[48 + t] = 16; // rows
        }
        TileConfig(cfg)
    }
}

/// Tiles configured on this thread for as long as it lives; released on drop (so the OS
/// need not save 8 KB of tile state at every context switch afterwards).
pub(crate) struct TileSession(());

impl TileSession {
    pub(crate) fn start() -> TileSession {
        let cfg = TileConfig::all_16x64();
        // SAFETY: callers reach this only after `available()` (the kernel choice checks it).
        unsafe { asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        TileSession(())
    }
}

impl Drop for TileSession {
    fn drop(&mut self) {
        // SAFETY: tiles were configured by `start` on this thread.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// C[32 x 32] = alpha * A * B + beta * C over `kc` (a multiple of 32) steps of K; `beta == 0`
/// never reads C. A is read where `a` says ([`APanel`]: packed, or rows of A itself); `b0`,
/// `b1`: `[kc/2][16][2]` (columns 0-15, 16-31). With alpha 1 and beta 0 or 1 the C tiles load from and store to C directly;
/// otherwise they go through a scratch block and are merged with vector code.
///
/// # Safety
/// AMX is available and a [`TileSession`] is live on this thread; the panels hold `kc` steps;
/// C has 32 rows of 32 writable floats `ldc` apart.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel_32x32(
    kc: usize,
    a: APanel,
    b0: *const u16,
    b1: *const u16,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let direct = alpha == 1.0 && (beta == 0.0 || beta == 1.0);
        // written whole by the tile stores below before it is read
        let mut scratch = std::mem::MaybeUninit::<[f32; 32 * 32]>::uninit();
        let (dst, ld) = if direct { (c, ldc) } else { (scratch.as_mut_ptr() as *mut f32, 32) };
        let stride = ld * 4; // bytes between C rows
        let (c00, c01, c10, c11) = (dst, dst.add(16), dst.add(16 * ld), dst.add(16 * ld + 16));
        if direct && beta == 1.0 {
            asm!("tileloadd tmm0, [{p} + {s}*1]", p = in(reg) c00, s = in(reg) stride, options(nostack, readonly));
            asm!("tileloadd tmm1, [{p} + {s}*1]", p = in(reg) c01, s = in(reg) stride, options(nostack, readonly));
            asm!("tileloadd tmm2, [{p} + {s}*1]", p = in(reg) c10, s = in(reg) stride, options(nostack, readonly));
            asm!("tileloadd tmm3, [{p} + {s}*1]", p = in(reg) c11, s = in(reg) stride, options(nostack, readonly));
        } else {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        }
        let row_bytes = 64usize;
        let a_rows = a.row_bytes;
        for step in 0..kc / 32 {
            let a0 = (a.ptr as *const u8).add(step * a.step_bytes);
            let (bb0, bb1) = (b0.add(step * 16 * 32), b1.add(step * 16 * 32));
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0,
                a1 = in(reg) a0.add(16 * a_rows),
                sa = in(reg) a_rows,
                b0 = in(reg) bb0,
                b1 = in(reg) bb1,
                s = in(reg) row_bytes,
                options(nostack, readonly)
            );
        }
        asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) c00, s = in(reg) stride, options(nostack));
        asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) c01, s = in(reg) stride, options(nostack));
        asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) c10, s = in(reg) stride, options(nostack));
        asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) c11, s = in(reg) stride, options(nostack));
        if !direct {
            let scratch = scratch.assume_init();
            for r in 0..32 {
                let row = c.add(r * ldc);
                for j in 0..32 {
                    let v = alpha * scratch[r * 32 + j];
                    *row.add(j) = if beta == 0.0 { v } else { v + beta * *row.add(j) };
                }
            }
        }
    }
}

/// `iterations` rounds of four independent `tdpbf16ps` on register tiles; returns the flops.
///
/// # Safety
/// AMX is available (see [`available`]).
pub(crate) unsafe fn tile_chains(iterations: usize) -> usize {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let _session = TileSession::start();
        asm!("tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7", options(nostack, nomem));
        for _ in 0..iterations {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nostack, nomem)
            );
        }
        iterations * 4 * 16 * 16 * 32 * 2
    }
}
