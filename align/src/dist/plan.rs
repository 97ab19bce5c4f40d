//! The cost of a data-parallel step, on paper: what each rank sends, receives and holds.
//!
//! From a configuration and a rank count, without building the model, [`Plan`] counts per
//! step and rank:
//! - the bytes handed to and returned by each collective of `crate::dist` (the figures
//!   [`super::Comm::traffic`] measures, so a test can hold the plan to the real thing);
//! - the bytes a ring algorithm puts on each rank's link, (N - 1) / N of a gather's output and
//!   2 (N - 1) / N of an all-reduce's buffer, and the time that takes at a given bandwidth;
//! - parameter, gradient and LAMB memory, and an estimate of the activations kept for backward.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{purpose, Traffic};
use crate::bert::BertConfig;
use crate::efficientnet::EfficientNetConfig;
use crate::error::{AlignError, Result};
use crate::train::TrainConfig;

/// One data-parallel configuration's per-step, per-rank costs.
#[derive(Clone, Debug)]
pub struct Plan {
    pub ranks: usize,
    /// Pairs per rank (n) and in the global batch (M = N n).
    pub local_batch: usize,
    pub global_batch: usize,
    pub embed_dim: usize,
    /// Trainable parameters (both towers, projection, temperature).
    pub parameters: usize,
    /// Channels of every batch norm of the image tower.
    pub batch_norm_channels: Vec<usize>,
    pub sync_bn: bool,
    /// Values per image and per caption that forward keeps for backward (estimate).
    pub activations_per_pair: usize,
}

fn image_config(cfg: &TrainConfig) -> Result<EfficientNetConfig> {
    EfficientNetConfig::by_name(&cfg.image_arch).ok_or_else(|| {
        AlignError::config("image tower", format!("the plan knows EfficientNets; '{}' is not one", cfg.image_arch))
    })
}

fn text_config(cfg: &TrainConfig) -> Result<BertConfig> {
    let mut text = BertConfig::by_name(&cfg.text_arch).ok_or_else(|| {
        AlignError::config("text tower", format!("the plan knows BERTs; '{}' is not one", cfg.text_arch))
    })?;
    text.vocab_size = cfg.vocab_size;
    text.max_position_embeddings = text.max_position_embeddings.max(cfg.max_tokens);
    Ok(text)
}

/// Trainable parameters of the image tower as ALIGN uses it (blocks, no head), and the channel
/// count of each of its batch norms.
fn image_tower(image: &EfficientNetConfig) -> (usize, Vec<usize>) {
    let stem = image.stem_channels();
    let (mut params, mut bns) = (27 * stem + 2 * stem, vec![stem]);
    for (k, _stride, expand, cin, cout) in image.blocks() {
        let mid = cin * expand;
        if expand != 1 {
            params += cin * mid + 2 * mid;
            bns.push(mid);
        }
        params += k * k * mid + 2 * mid;
        bns.push(mid);
        if !image.lite {
            let r = ((cin as f32 * 0.25) as usize).max(1);
            params += mid * r + r + r * mid + mid;
        }
        params += mid * cout + 2 * cout;
        bns.push(cout);
    }
    (params, bns)
}

/// Values kept for backward per image: one output per convolution and batch norm (the fused
/// batch norm + activation keeps only its input), at each block's resolution.
fn image_activations(image: &EfficientNetConfig, resolution: usize) -> usize {
    let mut side = resolution.div_ceil(2);
    let mut total = 2 * image.stem_channels() * side * side;
    for (_k, stride, expand, cin, cout) in image.blocks() {
        let mid = cin * expand;
        let out_side = side.div_ceil(stride);
        if expand != 1 {
            total += 2 * mid * side * side;
        }
        total += 2 * mid * out_side * out_side + cout * out_side * out_side;
        side = out_side;
    }
    total
}

/// Values kept for backward per caption of `tokens` tokens: per layer and token the layer's
/// input, Q, K, V, the attention context and output, two norms, both feed-forward activations,
/// and each head's attention row.
fn text_activations(text: &BertConfig, tokens: usize) -> usize {
    let (h, i) = (text.hidden_size, text.intermediate_size);
    tokens * (text.num_layers * (8 * h + 2 * i + text.num_heads * tokens) + 2 * h)
}

impl Plan {
    /// The plan for `ranks` ranks of `cfg.batch_size` pairs each.
    pub fn for_config(cfg: &TrainConfig, ranks: usize) -> Result<Plan> {
        if ranks == 0 {
            return Err(AlignError::config("--plan-replicas", "needs at least one rank"));
        }
        let image = image_config(cfg)?;
        let text = text_config(cfg)?;
        let (image_params, batch_norm_channels) = image_tower(&image);
        let embed_dim = image.feature_dim();
        // text tower: BERT without its pooler, then the [CLS] projection; plus the temperature
        let parameters = image_params + text.num_parameters() + text.hidden_size * embed_dim + embed_dim + 1;
        Ok(Plan {
            ranks,
            local_batch: cfg.batch_size,
            global_batch: cfg.batch_size * ranks,
            embed_dim,
            parameters,
            batch_norm_channels,
            sync_bn: cfg.sync_bn,
            activations_per_pair: image_activations(&image, cfg.resolution) + text_activations(&text, cfg.max_tokens),
        })
    }

    /// Per step and rank, by purpose: bytes handed to the communicator and returned by it, as
    /// [`super::Comm::traffic`] counts them (a single rank communicates nothing).
    pub fn traffic_per_step(&self) -> BTreeMap<&'static str, Traffic> {
        let mut t = BTreeMap::new();
        if self.ranks <= 1 {
            return t;
        }
        let (n, m, d, r) =
            (self.local_batch as u64, self.global_batch as u64, self.embed_dim as u64, self.ranks as u64);
        // stop agreement (f64), pair counts (u64 gathered), the loss (f64)
        t.insert(purpose::CONTROL, Traffic { calls: 3, sent: 8 + 8 + 8, received: 8 + 8 * r + 8 });
        // image and text embeddings, each preceded by its row counts (counted under control)
        t.insert(purpose::EMBEDDINGS, Traffic { calls: 2, sent: 2 * 4 * n * d, received: 2 * 4 * m * d });
        let control = t.get_mut(purpose::CONTROL).expect("control");
        control.calls += 2;
        control.sent += 2 * 8;
        control.received += 2 * 8 * r;
        t.insert(purpose::EMBEDDING_GRADIENTS, Traffic { calls: 1, sent: 8 * m * d, received: 8 * m * d });
        let grads = 4 * self.parameters as u64;
        let buckets = grads.div_ceil(super::DEFAULT_BUCKET_BYTES as u64);
        t.insert(purpose::GRADIENTS, Traffic { calls: buckets, sent: grads, received: grads });
        let (calls, values) = if self.sync_bn {
            // forward: (sums, count) then centred squares; backward: (two sums, count); f64
            let values: usize = self.batch_norm_channels.iter().map(|&c| (c + 1) + c + (2 * c + 1)).sum();
            (3 * self.batch_norm_channels.len() as u64, values as u64)
        } else {
            // the running means and variances, averaged once a step
            (1, 2 * self.batch_norm_channels.iter().sum::<usize>() as u64)
        };
        if values > 0 {
            t.insert(purpose::BATCH_NORM, Traffic { calls, sent: 8 * values, received: 8 * values });
        }
        t
    }

    /// Bytes each rank's link carries per step under ring algorithms, by purpose (each way).
    pub fn wire_bytes_per_step(&self) -> BTreeMap<&'static str, f64> {
        let share = (self.ranks as f64 - 1.0) / self.ranks as f64;
        self.traffic_per_step()
            .into_iter()
            .map(|(purpose, t)| {
                let bytes = if purpose == purpose::EMBEDDINGS {
                    share * t.received as f64 // a ring all-gather passes on all but its own part
                } else {
                    2.0 * share * t.sent as f64 // reduce-scatter, then all-gather
                };
                (purpose, bytes)
            })
            .collect()
    }

    /// Bytes per rank: parameters, gradients and LAMB's two moments (all f32).
    pub fn optimiser_bytes(&self) -> u64 {
        16 * self.parameters as u64
    }

    /// Bytes per rank of activations kept for backward (f32, estimate).
    pub fn activation_bytes(&self) -> u64 {
        4 * (self.activations_per_pair * self.local_batch) as u64
    }

    /// The README's table: traffic, link time at `link_gbps` Gbit/s, memory.
    pub fn table(&self, link_gbps: f64) -> String {
        let mib = |b: f64| b / (1u64 << 20) as f64;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} ranks x {} pairs = global batch {}; {:.1}M trainable parameters; {}-d embeddings{}",
            self.ranks,
            self.local_batch,
            self.global_batch,
            self.parameters as f64 / 1e6,
            self.embed_dim,
            if self.sync_bn { "; synchronised batch norm" } else { "" }
        );
        let _ = writeln!(s, "per step and rank:");
        let _ = writeln!(
            s,
            "  {:<32} {:>6} {:>12} {:>12} {:>14}",
            "collective", "calls", "sent MiB", "recv MiB", "on link MiB"
        );
        let wire = self.wire_bytes_per_step();
        let mut total_wire = 0.0;
        for (purpose, t) in self.traffic_per_step() {
            let w = wire[purpose];
            total_wire += w;
            let _ = writeln!(
                s,
                "  {:<32} {:>6} {:>12.3} {:>12.3} {:>14.3}",
                purpose,
                t.calls,
                mib(t.sent as f64),
                mib(t.received as f64),
                mib(w)
            );
        }
        let seconds = total_wire * 8.0 / (link_gbps * 1e9);
        let _ = writeln!(
            s,
            "  link time at {link_gbps} Gbit/s: {:.1} ms per step (lower bound: bandwidth only, no latency, no overlap)",
            1e3 * seconds
        );
        let _ = writeln!(
            s,
            "memory per rank: parameters + gradients + LAMB moments {:.2} GiB; activations kept for backward ~{:.2} GiB (estimate)",
            mib(self.optimiser_bytes() as f64) / 1024.0,
            mib(self.activation_bytes() as f64) / 1024.0
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DualEncoder;
    use nn::Module;

    #[test]
    fn the_plan_counts_the_parameters_and_batch_norms_of_the_built_model() {
        for (image, text) in [("b0", "mini"), ("lite0", "tiny")] {
            let cfg = TrainConfig { image_arch: image.into(), text_arch: text.into(), ..TrainConfig::tiny() };
            let plan = Plan::for_config(&cfg, 2).unwrap();
            let model = DualEncoder::new(&cfg, cfg.vocab_size, &mut tensor::Rng::new(0)).unwrap();
            let params: usize = model.named_parameters().iter().map(|(_, p)| p.value().numel()).sum();
            assert_eq!(plan.parameters, params, "{image} + {text}");
            let bn: Vec<usize> = model
                .named_buffers()
                .iter()
                .filter(|(n, _)| n.ends_with("running_mean"))
                .map(|(_, b)| b.get().numel())
                .collect();
            assert_eq!(plan.batch_norm_channels.iter().sum::<usize>(), bn.iter().sum::<usize>());
            assert_eq!(plan.batch_norm_channels.len(), bn.len());
        }
        let e = Plan::for_config(&TrainConfig { image_arch: "vit-tiny".into(), ..TrainConfig::tiny() }, 2).unwrap_err();
        assert!(e.to_string().contains("EfficientNet"), "{e}");
    }

    #[test]
    fn the_paper_plan_prints_its_table() {
        let cfg = TrainConfig { batch_size: 16, ..TrainConfig::paper() };
        let plan = Plan::for_config(&cfg, 1024).unwrap();
        assert_eq!(plan.global_batch, 16384);
        let table = plan.table(100.0);
        assert!(table.contains("gradient all-reduce") && table.contains("link time"), "{table}");
        // ~640M parameters x 4 bytes, reduced by a ring: about twice that on the link
        let wire = plan.wire_bytes_per_step()[purpose::GRADIENTS];
        assert!((wire / (8.0 * plan.parameters as f64) - 1.0).abs() < 0.01);
    }
}
