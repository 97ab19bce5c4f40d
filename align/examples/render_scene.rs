//! Saves a few built-in corpus scenes as PNG with their alt-texts: `cargo run -p align --example render_scene -- OUT_DIR`
fn main() {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "scenes".into()));
    std::fs::create_dir_all(&out).unwrap();
    for i in 0..4u64 {
        let s = align::data::Scene::generate(1, i);
        let mut rng = tensor::Rng::new(i);
        let path = out.join(format!("scene{i}.png"));
        s.render().save(&path).unwrap();
        println!(
            "{} {}x{}: {} | clean: {}",
            path.display(),
            s.width,
            s.height,
            s.alt_text(&mut rng),
            s.clean_caption(i as usize)
        );
    }
}
