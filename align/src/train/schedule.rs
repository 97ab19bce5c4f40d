//! The optimiser's parameter groups and the learning rate of every step.
//!
//! Groups are found by parameter name and shape: weights (rank >= 2) get weight decay and
//! LAMB's trust ratio; biases and normalisation parameters (rank <= 1) get neither; the
//! temperature has a group of its own whose learning rate is `temperature_lr_scale` times the
//! schedule's (short CPU runs cannot afford the paper's million steps for sigma to travel from
//! 1 to about 1/64). The schedule is linear warm-up, then linear decay to zero.

use autograd::Var;
use nn::optim::{decay_groups, Optimizer, ParamGroup};
use nn::schedule::LrSchedule;

use crate::model::LOG_TEMPERATURE;
use crate::train::TrainConfig;

pub struct Schedule {
    lr: LrSchedule,
}

impl Schedule {
    pub fn new(cfg: &TrainConfig) -> Schedule {
        Schedule { lr: LrSchedule::WarmupLinear { peak: cfg.lr, warmup: cfg.warmup, total: cfg.steps, end: 0.0 } }
    }

    /// The schedule's learning rate at `step` (before each group's scale).
    pub fn lr_at(&self, step: u64) -> f32 {
        self.lr.lr_at(step)
    }

    /// Sets every group's learning rate for `step`; returns the schedule's rate.
    pub fn apply(&self, opt: &mut dyn Optimizer, step: u64) -> f32 {
        let lr = self.lr_at(step);
        for g in opt.groups_mut() {
            g.lr = lr * g.lr_scale;
        }
        lr
    }
}

/// The groups of a dual encoder's named parameters (see the module header).
pub fn param_groups(params: Vec<(String, Var)>, cfg: &TrainConfig) -> Vec<ParamGroup> {
    let (temperature, rest): (Vec<_>, Vec<_>) = params.into_iter().partition(|(n, _)| n == LOG_TEMPERATURE);
    let mut groups = decay_groups(rest, cfg.lr, cfg.weight_decay);
    groups.push(ParamGroup {
        name: "temperature".into(),
        params: temperature,
        lr: cfg.lr * cfg.temperature_lr_scale,
        lr_scale: cfg.temperature_lr_scale,
        weight_decay: 0.0,
        no_trust_ratio: true,
    });
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::Tensor;

    #[test]
    fn groups_are_found_by_name_and_rank_and_scaled_by_the_schedule() {
        let p = |shape: &[usize]| Var::parameter(Tensor::zeros(shape));
        let params = vec![
            (LOG_TEMPERATURE.to_string(), p(&[])),
            ("fc.weight".to_string(), p(&[3, 2])),
            ("fc.bias".to_string(), p(&[3])),
        ];
        let cfg = TrainConfig { lr: 0.5, warmup: 0, steps: 10, temperature_lr_scale: 20.0, ..TrainConfig::tiny() };
        let mut opt = nn::optim::Lamb::new(param_groups(params, &cfg));
        let names = |g: &ParamGroup| g.params.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let by_name = |opt: &nn::optim::Lamb, group: &str| {
            opt.groups().iter().find(|g| g.name == group).map(|g| (names(g), g.lr, g.weight_decay)).unwrap()
        };
        assert_eq!(by_name(&opt, "decay").0, ["fc.weight"]);
        assert_eq!(by_name(&opt, "no_decay").0, ["fc.bias"]);
        assert_eq!(by_name(&opt, "temperature").0, [LOG_TEMPERATURE]);
        assert_eq!(by_name(&opt, "no_decay").2, 0.0);
        let schedule = Schedule::new(&cfg);
        let lr = schedule.apply(&mut opt, 5);
        assert!((lr - 0.25).abs() < 1e-6, "linear decay halfway: {lr}");
        assert_eq!(by_name(&opt, "decay").1, lr);
        assert_eq!(by_name(&opt, "temperature").1, lr * 20.0);
    }
}
