//! Lists the tensors of a PyTorch `.pt` / `.pth` state dict: `cargo run -p tensor --example pth_info -- FILE`
fn main() {
    let path = std::env::args().nth(1).expect("usage: pth_info FILE");
    match tensor::io::torch::load_state_dict(&path) {
        Ok(tensors) => {
            for (name, t) in &tensors {
                println!("{name} {:?} {t}", t.shape());
            }
            println!("{} tensors", tensors.len());
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
