//! Learning-rate schedules: constant, and linear warm-up followed by linear or cosine decay
//! (ALIGN: warm-up 0 -> 1e-3 over 10k steps, then linear decay to 0 at 1.2M steps).

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    Constant {
        lr: f32,
    },
    /// 0 -> peak linearly over `warmup` steps, then linearly to `end` at `total`.
    WarmupLinear {
        peak: f32,
        warmup: u64,
        total: u64,
        end: f32,
    },
    /// 0 -> peak linearly over `warmup` steps, then half a cosine down to `end` at `total`.
    WarmupCosine {
        peak: f32,
        warmup: u64,
        total: u64,
        end: f32,
    },
}

impl LrSchedule {
    /// Learning rate for update number `step` (0-based: the first update uses step 0).
    pub fn lr_at(&self, step: u64) -> f32 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::WarmupLinear { peak, warmup, total, end }
            | LrSchedule::WarmupCosine { peak, warmup, total, end } => {
                if step < warmup {
                    return peak * (step + 1) as f32 / warmup as f32;
                }
                let span = total.saturating_sub(warmup).max(1);
                let progress = ((step - warmup) as f32 / span as f32).min(1.0);
                match self {
                    LrSchedule::WarmupLinear { .. } => peak + (end - peak) * progress,
                    _ => end + (peak - end) * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_hit_their_landmarks() {
        let s = LrSchedule::WarmupLinear { peak: 1e-3, warmup: 10, total: 110, end: 0.0 };
        assert!((s.lr_at(0) - 1e-4).abs() < 1e-9);
        assert!((s.lr_at(9) - 1e-3).abs() < 1e-9);
        assert!((s.lr_at(60) - 5e-4).abs() < 1e-8);
        assert_eq!(s.lr_at(110), 0.0);
        assert_eq!(s.lr_at(10_000), 0.0);
        let c = LrSchedule::WarmupCosine { peak: 1.0, warmup: 0, total: 100, end: 0.1 };
        assert!((c.lr_at(0) - 1.0).abs() < 1e-6);
        assert!((c.lr_at(50) - 0.55).abs() < 1e-6);
        assert!((c.lr_at(100) - 0.1).abs() < 1e-6);
        assert_eq!(LrSchedule::Constant { lr: 0.3 }.lr_at(7), 0.3);
    }
}
