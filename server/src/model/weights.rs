//! Reading a checkpoint's tensors: `model.safetensors` (memory-mapped, possibly sharded with
//! `model.safetensors.index.json`) or `pytorch_model.bin` (zip + pickle state dict), converted
//! to the serving dtype and device, and looked up by their transformers names with a shape check.
//!
//! A safetensors tensor that is already in the serving dtype and stays on the CPU is not copied:
//! it is a view of a private (copy-on-write) mapping of the file that libtorch owns, so its
//! pages are clean file pages shared with the page cache, read in as they are first used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::error::{GitcapError, Result};

/// Names used by older checkpoints for tensors transformers has since renamed.
/// The hub's GIT video checkpoints spell the temporal embeddings `img_temperal_embedding`.
const LEGACY_NAMES: &[(&str, &str)] = &[("img_temporal_embedding", "img_temperal_embedding")];

/// All tensors of a checkpoint, already in the serving dtype and on the serving device.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

/// Whether tensors already in the serving dtype may stay views of the mapped file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Views of the file where the dtype and device allow, copies elsewhere.
    Mapped,
    /// Copies of every tensor: for weights that are converted after loading (fast mode's
    /// quantisation), whose file pages would otherwise stay mapped, read in, after the conversion.
    Copied,
}

impl Weights {
    /// Loads the weights of a checkpoint directory, whichever format it ships, mapping the
    /// tensors that need no conversion.
    pub fn from_dir(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        Self::read(dir, kind, device, Storage::Mapped)
    }

    pub fn read(dir: &Path, kind: Kind, device: Device, storage: Storage) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let pickle = dir.join("pytorch_model.bin");
        let tensors = if single.exists() {
            read_safetensors(&single, kind, device, storage)?
        } else if index.exists() {
            let mut all = HashMap::new();
            for shard in shard_files(&index)? {
                all.extend(read_safetensors(&dir.join(shard), kind, device, storage)?);
            }
            all
        } else if pickle.exists() {
            read_pickle(&pickle, kind, device)?
        } else {
            return Err(GitcapError::model_files(format!(
                "{} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin",
                dir.display()
            )));
        };
        Ok(Self { tensors })
    }

    pub fn from_map(tensors: HashMap<String, Tensor>) -> Self {
        Self { tensors }
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let tensor = self.lookup(name).ok_or_else(|| GitcapError::MissingTensor { name: name.into() })?;
        if tensor.size() != shape {
            return Err(GitcapError::TensorShape {
                name: name.into(),
                expected: shape.to_vec(),
                actual: tensor.size(),
            });
        }
        Ok(tensor.shallow_clone())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    fn lookup(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name).or_else(|| {
            LEGACY_NAMES.iter().find_map(|(current, legacy)| {
                name.contains(current).then(|| self.tensors.get(&name.replace(current, legacy))).flatten()
            })
        })
    }

    /// Converts the floating tensors whose names start with `prefix` to `kind`.
    pub fn convert_prefix(&mut self, prefix: &str, kind: Kind) {
        for (_, tensor) in self.tensors.iter_mut().filter(|(name, _)| name.starts_with(prefix)) {
            if tensor.is_floating_point() {
                *tensor = tensor.to_kind(kind);
            }
        }
    }

    /// Bytes held by all tensors.
    pub fn bytes(&self) -> usize {
        self.tensors.values().map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum()
    }
}

fn shard_files(index: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index)
        .map_err(|e| GitcapError::model_files(format!("cannot read {}: {e}", index.display())))?;
    let parsed: Index = serde_json::from_str(&text)
        .map_err(|e| GitcapError::model_files(format!("invalid {}: {e}", index.display())))?;
    let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

fn read_safetensors(path: &Path, kind: Kind, device: Device, storage: Storage) -> Result<HashMap<String, Tensor>> {
    let file = std::fs::File::open(path)
        .map_err(|e| GitcapError::model_files(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: the file is opened read-only and only read while `mmap` is alive; tensors are
    // either copied out of it or made views of libtorch's own mapping below, so nothing refers
    // to this one afterwards.
    let mmap = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| GitcapError::model_files(format!("cannot map {}: {e}", path.display())))?;
    let st = SafeTensors::deserialize(&mmap)
        .map_err(|e| GitcapError::model_files(format!("{} is not a valid safetensors file: {e}", path.display())))?;
    let mapped = (storage == Storage::Mapped && device == Device::Cpu).then(|| map_file(path, mmap.len())).flatten();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let source_kind = kind_of(view.dtype()).ok_or_else(|| {
            GitcapError::model_files(format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()))
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let offset = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
        let view_of_file = mapped
            .as_ref()
            .filter(|_| serving_kind(source_kind, kind) == source_kind)
            .and_then(|file| file_view(file, offset, view.data().len(), source_kind, &shape));
        let tensor = match view_of_file {
            Some(tensor) => tensor,
            None => convert(Tensor::f_from_data_size(view.data(), &shape, source_kind)?, kind, device),
        };
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

/// The whole file as bytes [len] in a private mapping owned by libtorch (`torch.from_file`
/// with `shared=False`): writes to it, if any, would stay in this process. None where it cannot
/// be made; the tensors are then copied.
fn map_file(path: &Path, len: usize) -> Option<Tensor> {
    let name = path.to_str()?;
    Tensor::f_from_file(name, false, len as i64, (Kind::Uint8, Device::Cpu)).ok()
}

/// The tensor at `offset..offset + len` of the mapped file, or None where the bytes are not
/// aligned for `kind` (safetensors does not promise it) or the tensor is empty.
fn file_view(file: &Tensor, offset: usize, len: usize, kind: Kind, shape: &[i64]) -> Option<Tensor> {
    if len == 0 || !offset.is_multiple_of(kind.elt_size_in_bytes()) {
        return None;
    }
    file.f_narrow(0, offset as i64, len as i64).ok()?.f_view_dtype(kind).ok()?.f_view(shape).ok()
}

fn read_pickle(path: &PathBuf, kind: Kind, device: Device) -> Result<HashMap<String, Tensor>> {
    let named = Tensor::loadz_multi(path).map_err(|e| {
        GitcapError::model_files(format!("{} is not a readable PyTorch state dict: {e}", path.display()))
    })?;
    Ok(named.into_iter().map(|(name, t)| (name, convert(t, kind, device))).collect())
}

/// Floating tensors take the serving dtype; integer buffers keep theirs.
fn convert(tensor: Tensor, kind: Kind, device: Device) -> Tensor {
    let target = serving_kind(tensor.kind(), kind);
    tensor.to_device(device).to_kind(target)
}

fn serving_kind(source: Kind, serving: Kind) -> Kind {
    let floating = matches!(source, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16);
    if floating {
        serving
    } else {
        source
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}
