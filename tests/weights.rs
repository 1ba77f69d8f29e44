//! Loading checkpoints: formats, legacy names, and errors that name the bad tensor.

mod common;

use std::path::Path;

use tch::{Device, Kind, Tensor};

use common::fixtures::model_dir;
use gitcap_server::engine::Pipeline;
use gitcap_server::error::GitcapError;
use gitcap_server::model::GitForCausalLM;

/// A copy of a fixture checkpoint whose weights went through `edit`.
fn edited_checkpoint(edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> tempfile::TempDir {
    let src = model_dir("tiny-git-image");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let mut tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

fn load(dir: &Path) -> Result<GitForCausalLM, GitcapError> {
    GitForCausalLM::from_dir(dir, Kind::Float, Device::Cpu)
}

#[test]
fn a_missing_tensor_is_named() {
    let name = "git.encoder.layer.1.output.dense.weight";
    let dir = edited_checkpoint(|t| t.retain(|(n, _)| n != name));
    let err = load(dir.path()).err().expect("loading must fail");
    assert!(matches!(&err, GitcapError::MissingTensor { name: n } if n == name), "{err}");
    assert!(err.to_string().contains(name));
}

#[test]
fn a_misshaped_tensor_is_named_with_both_shapes() {
    let name = "git.image_encoder.vision_model.embeddings.position_embedding.weight";
    let dir = edited_checkpoint(|t| {
        let entry = t.iter_mut().find(|(n, _)| n == name).unwrap();
        entry.1 = entry.1.narrow(0, 0, 5).copy();
    });
    let err = load(dir.path()).err().expect("loading must fail");
    let message = err.to_string();
    assert!(message.contains(name) && message.contains("[5, 32]") && message.contains("[17, 32]"), "{message}");
}

#[test]
fn corrupt_or_absent_weights_give_clear_errors() {
    let dir = edited_checkpoint(|_| {});
    std::fs::write(dir.path().join("model.safetensors"), b"not a safetensors file").unwrap();
    let message = load(dir.path()).err().unwrap().to_string();
    assert!(message.contains("model.safetensors") && message.contains("not a valid safetensors"), "{message}");

    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let message = load(dir.path()).err().unwrap().to_string();
    assert!(message.contains("no model.safetensors"), "{message}");
}

#[test]
fn every_fixture_format_loads_and_the_temporal_embeddings_are_used() {
    // tiny-git-video stores `git.img_temperal_embedding.*` (the hub's spelling); tiny-git-wide
    // is a pytorch_model.bin.
    for name in ["tiny-git-image", "tiny-git-video", "tiny-git-wide"] {
        Pipeline::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap();
    }
    let video = GitForCausalLM::from_dir(&model_dir("tiny-git-video"), Kind::Float, Device::Cpu).unwrap();
    let features = Tensor::zeros([2, 17, 32], (Kind::Float, Device::Cpu));
    let tokens = video.image_tokens(&features).unwrap();
    let (first, second) = (tokens.narrow(1, 0, 17), tokens.narrow(1, 17, 17));
    assert!((first - second).abs().max().double_value(&[]) > 1e-3, "frames must get different temporal embeddings");
}

#[test]
fn weights_convert_to_the_serving_dtype() {
    for kind in [Kind::BFloat16, Kind::Half] {
        let model = GitForCausalLM::from_dir(&model_dir("tiny-git-image"), kind, Device::Cpu).unwrap();
        assert_eq!(model.kind(), kind);
        let pixels = Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu));
        let logits = model.forward(&pixels, &Tensor::from_slice(&[101i64]).view([1, 1])).unwrap();
        assert_eq!(logits.kind(), Kind::Float, "logits come back in f32");
        assert!(logits.isfinite().all().int64_value(&[]) == 1, "{kind:?} logits are finite");
    }
}

#[test]
fn a_sharded_safetensors_checkpoint_loads_like_the_single_file() {
    let src = model_dir("tiny-git-image");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "model.safetensors" {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        Tensor::write_safetensors(part, dir.path().join(shard)).unwrap();
        for (name, _) in part {
            weight_map.insert(name.clone(), shard.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let _guard = tch::no_grad_guard();
    let pixels = Tensor::rand([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let ids = Tensor::from_slice(&[101i64, 2054]).view([1, 2]);
    let sharded = load(dir.path()).unwrap().forward(&pixels, &ids).unwrap();
    let single = load(&src).unwrap().forward(&pixels, &ids).unwrap();
    assert!(sharded.equal(&single));
}

/// The file backing the memory at `ptr` in this process, if it is a file mapping.
fn mapped_file_of(ptr: usize) -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let (start, end) = (usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?);
        let path = fields.nth(4)?;
        (start <= ptr && ptr < end && path.starts_with('/')).then(|| path.into())
    })
}

const SOME_WEIGHT: (&str, [i64; 2]) = ("git.encoder.layer.0.intermediate.dense.weight", [32, 8]);

#[test]
fn weights_already_in_the_serving_dtype_are_views_of_the_file_others_are_copies() {
    use gitcap_server::model::weights::{Storage, Weights};
    let dir = model_dir("tiny-git-image");
    let file = dir.join("model.safetensors").canonicalize().unwrap();
    let (name, shape) = SOME_WEIGHT;

    let mapped = Weights::from_dir(&dir, Kind::Float, Device::Cpu).unwrap().get(name, &shape).unwrap();
    assert_eq!(mapped_file_of(mapped.data_ptr() as usize), Some(file.clone()), "f32 from an f32 file is mapped");
    let reference = Tensor::read_safetensors(&file).unwrap().into_iter().find(|(n, _)| n == name).unwrap().1;
    assert!(mapped.equal(&reference));

    for (kind, storage) in [(Kind::BFloat16, Storage::Mapped), (Kind::Float, Storage::Copied)] {
        let copied = Weights::read(&dir, kind, Device::Cpu, storage).unwrap().get(name, &shape).unwrap();
        assert_eq!(mapped_file_of(copied.data_ptr() as usize), None, "{kind:?} {storage:?} is a copy");
    }
}

#[test]
fn a_mapped_model_outlives_its_file_and_never_writes_to_it() {
    let dir = edited_checkpoint(|_| {});
    let file = dir.path().join("model.safetensors");
    let bytes_before = std::fs::read(&file).unwrap();
    let _guard = tch::no_grad_guard();
    let pixels = Tensor::rand([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let ids = Tensor::from_slice(&[101i64, 2054]).view([1, 2]);

    let model = load(dir.path()).unwrap();
    let expected = model.forward(&pixels, &ids).unwrap();
    // A write to a mapped weight (nothing in gitcap does one) stays private to the process.
    let weights = gitcap_server::model::Weights::from_dir(dir.path(), Kind::Float, Device::Cpu).unwrap();
    let mut weight = weights.get(SOME_WEIGHT.0, &SOME_WEIGHT.1).unwrap();
    let _ = weight.fill_(0.0);
    assert_eq!(std::fs::read(&file).unwrap(), bytes_before, "the checkpoint file is unchanged");
    drop(weights);

    drop(dir);
    assert!(!file.exists());
    assert!(model.forward(&pixels, &ids).unwrap().equal(&expected), "the mapping lives as long as the model");
}

/// Resident kB of the mappings of `file` in process `pid`, or None when it is not mapped.
fn mapped_kib_of(pid: u32, file: &Path) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut inside = false;
    let mut total = None;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first().is_some_and(|f| f.contains('-') && f.chars().all(|c| c.is_ascii_hexdigit() || c == '-')) {
            inside = fields.get(5).is_some_and(|path| Path::new(path) == file);
            if inside {
                total.get_or_insert(0);
            }
        } else if inside && fields.first() == Some(&"Rss:") {
            *total.get_or_insert(0) += fields[1].parse::<u64>().unwrap();
        }
    }
    total
}

/// Waits until the server's default model is loaded and serving.
async fn wait_serving(server: &common::server::TestServer) {
    let client = server.client(None).await;
    for _ in 0..300 {
        if client.health("gitcap.v1.Captioner/default").await.ok() == Some(gitcap_client::HealthStatus::Serving) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the model did not become ready");
}

#[tokio::test]
async fn the_server_maps_the_checkpoint_unless_model_map_weights_is_false() {
    let file = model_dir("tiny-git-image").join("model.safetensors").canonicalize().unwrap();
    let mapped = common::server::TestServer::start("tiny-git-image", &[]);
    wait_serving(&mapped).await;
    assert!(mapped_kib_of(mapped.pid(), &file).is_some(), "f32 weights are views of the file by default");
    let copied =
        common::server::TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__MODEL__MAP_WEIGHTS", "false")]);
    wait_serving(&copied).await;
    assert_eq!(mapped_kib_of(copied.pid(), &file), None, "model.map_weights = false copies every tensor");
}

#[test]
fn a_tensor_misaligned_in_the_file_is_copied_with_its_values() {
    // safetensors does not promise alignment: a 1-byte tensor first puts the f32 one at offset 1.
    let header =
        r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}}"#;
    let mut header = header.as_bytes().to_vec();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(&header);
    file.push(7);
    for value in [1.5f32, -2.25] {
        file.extend(value.to_le_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors"), &file).unwrap();

    let weights = gitcap_server::model::Weights::from_dir(dir.path(), Kind::Float, Device::Cpu).unwrap();
    let b = weights.get("b", &[2]).unwrap();
    assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![1.5, -2.25]);
    assert_eq!(mapped_file_of(b.data_ptr() as usize), None, "a misaligned tensor is a copy");
    let a = weights.get("a", &[1]).unwrap();
    assert_eq!((a.kind(), a.int64_value(&[0])), (Kind::Uint8, 7));
    assert!(mapped_file_of(a.data_ptr() as usize).is_some(), "an aligned one in its own dtype is a view");
}
