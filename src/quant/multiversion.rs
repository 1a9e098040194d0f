//! Compiling a hot kernel twice: portable (the x86-64 baseline, or any other target) and for
//! AVX2/FMA/F16C CPUs, chosen at run time. The two copies come from the same source, so the
//! compiler vectorises the second with 256-bit registers and nothing else changes: kernels are
//! written with explicit accumulation lanes and integer sums, so both copies produce
//! bit-identical results (a test holds each kernel to that).

/// Whether this CPU runs the AVX2 copies (detected once).
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::atomic::{AtomicU8, Ordering};
        static STATE: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 no, 2 yes
        match STATE.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => {
                let yes =
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c");
                STATE.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `multiversion! { pub fn name / name_portable(args) -> T { body } }` defines `name`, which
/// runs the body compiled for AVX2 when the CPU has it, and `name_portable`, the body
/// compiled for the baseline target (the plain twin tests compare against).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident / $portable:ident ($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$meta])*
        #[inline]
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $portable($($arg),*)
                }
                if $crate::quant::multiversion::has_avx2() {
                    // SAFETY: the CPU supports every feature `avx2` is compiled with.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }

        /// The same kernel compiled for the baseline target.
        #[inline(always)]
        $vis fn $portable($($arg: $ty),*) -> $ret $body
    };
}

pub(crate) use multiversion;
