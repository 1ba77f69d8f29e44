//! Parsing the `device` and `dtype` settings.

use tch::{Device, Kind};

use crate::error::{GitcapError, Result};

/// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn parse_device(text: &str) -> Result<Device> {
    let device = match text.trim().to_ascii_lowercase().as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => Device::Cuda(n),
            None => return Err(GitcapError::invalid("device", format!("`{text}` is not cpu, cuda or cuda:N"))),
        },
    };
    if let Device::Cuda(n) = device {
        let available = tch::Cuda::device_count() as usize;
        if n >= available {
            return Err(GitcapError::invalid(
                "device",
                format!(
                    "{text} asked for, but {available} CUDA device(s) are visible (is this a `--features cuda` build?)"
                ),
            ));
        }
    }
    Ok(device)
}

/// `f32`/`float32`, `f16`/`float16`, `bf16`/`bfloat16`.
pub fn parse_dtype(text: &str) -> Result<Kind> {
    Ok(match text.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => Kind::Float,
        "f16" | "float16" | "half" => Kind::Half,
        "bf16" | "bfloat16" => Kind::BFloat16,
        _ => return Err(GitcapError::invalid("dtype", format!("`{text}` is not f32, f16 or bf16"))),
    })
}

pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Half => "f16",
        Kind::BFloat16 => "bf16",
        _ => "f32",
    }
}
