//! Retrieval metrics as the paper reports them: Recall@K in both directions and median rank.
//!
//! `similarity` is (images, texts); `text_owner[t]` is the image that text t describes, so an
//! image may own several captions (Flickr30K / MSCOCO protocol: an image query is a hit when any
//! of its captions is in the top K). Ties count against the query (a correct item tied with a
//! wrong one ranks below it), so a constant model scores chance, not perfection.

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RetrievalMetrics {
    pub i2t_r1: f32,
    pub i2t_r5: f32,
    pub i2t_r10: f32,
    pub t2i_r1: f32,
    pub t2i_r5: f32,
    pub t2i_r10: f32,
    pub i2t_median_rank: f32,
    pub t2i_median_rank: f32,
}

/// 1-based rank of the best correct item in `scores` (ties pessimistic).
fn rank_of(scores: &[f32], correct: impl Fn(usize) -> bool) -> usize {
    let best =
        scores.iter().enumerate().filter(|(i, _)| correct(*i)).map(|(_, &s)| s).fold(f32::NEG_INFINITY, f32::max);
    1 + scores.iter().enumerate().filter(|&(i, &s)| !correct(i) && s >= best).count()
}

fn median(mut v: Vec<usize>) -> f32 {
    if v.is_empty() {
        return f32::NAN;
    }
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2] as f32
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f32 / 2.0
    }
}

/// Metrics from an (images x texts) similarity matrix given row-major.
pub fn retrieval_metrics(similarity: &[f32], images: usize, texts: usize, text_owner: &[usize]) -> RetrievalMetrics {
    assert_eq!(similarity.len(), images * texts);
    assert_eq!(text_owner.len(), texts);
    let i2t: Vec<usize> =
        (0..images).map(|i| rank_of(&similarity[i * texts..(i + 1) * texts], |t| text_owner[t] == i)).collect();
    let t2i: Vec<usize> = (0..texts)
        .map(|t| {
            let col: Vec<f32> = (0..images).map(|i| similarity[i * texts + t]).collect();
            rank_of(&col, |i| i == text_owner[t])
        })
        .collect();
    let recall =
        |ranks: &[usize], k: usize| ranks.iter().filter(|&&r| r <= k).count() as f32 / ranks.len().max(1) as f32;
    RetrievalMetrics {
        i2t_r1: recall(&i2t, 1),
        i2t_r5: recall(&i2t, 5),
        i2t_r10: recall(&i2t, 10),
        t2i_r1: recall(&t2i, 1),
        t2i_r5: recall(&t2i, 5),
        t2i_r10: recall(&t2i, 10),
        i2t_median_rank: median(i2t),
        t2i_median_rank: median(t2i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_cases_ties_multiple_captions_and_large_k() {
        // 2 images, 3 texts: texts 0 and 1 describe image 0, text 2 describes image 1.
        let sim = [
            0.9, 0.1, 0.5, // image 0: its caption 0 is first
            0.2, 0.3, 0.1, // image 1: its caption (2) is last -> rank 3
        ];
        let m = retrieval_metrics(&sim, 2, 3, &[0, 0, 1]);
        assert_eq!((m.i2t_r1, m.i2t_r5), (0.5, 1.0)); // K larger than the gallery: everything found
                                                      // text 0 -> image 0 (0.9 vs 0.2) hit; text 1 -> image 1 wins (0.3 > 0.1) rank 2; text 2 -> image 0 wins, rank 2
        assert!((m.t2i_r1 - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(m.t2i_median_rank, 2.0);
        assert_eq!(m.i2t_median_rank, 2.0);
        // ties are pessimistic: a constant similarity ranks every correct item last
        let flat = [0.5; 4];
        let m = retrieval_metrics(&flat, 2, 2, &[0, 1]);
        assert_eq!(m.i2t_r1, 0.0);
        assert_eq!(m.t2i_median_rank, 2.0);
    }
}
