//! The `device` a model runs on, parsed once where the text enters (settings, flags, the admin
//! API), and checked against the machine when a model is loaded.

use std::fmt;
use std::str::FromStr;

use tch::Device;

use crate::error::{GitcapError, Result};

/// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec(pub Device);

impl DeviceSpec {
    pub const CPU: DeviceSpec = DeviceSpec(Device::Cpu);

    /// The device, once this machine is known to have it.
    pub fn available(self) -> Result<Device> {
        let Device::Cuda(n) = self.0 else { return Ok(self.0) };
        let visible = tch::Cuda::device_count() as usize;
        if n < visible {
            return Ok(self.0);
        }
        let why = if cfg!(feature = "cuda") {
            format!(
                "this CUDA build sees {visible} CUDA device(s): check the driver (nvidia-smi), \
                 CUDA_VISIBLE_DEVICES, and that libtorch_cuda's libraries load (LD_LIBRARY_PATH)"
            )
        } else {
            "this gitcap-server was built without CUDA support: build it with `--features cuda` \
             (README: CUDA)"
                .to_string()
        };
        Err(GitcapError::invalid("device", format!("{self} asked for, but {why}")))
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let device = match text.trim().to_ascii_lowercase().as_str() {
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda(0),
            other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => Device::Cuda(n),
                None => return Err(format!("`{text}` is not cpu, cuda or cuda:N")),
            },
        };
        Ok(Self(device))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            _ => f.write_str("cpu"),
        }
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::CPU);
        assert_eq!(" CUDA ".parse::<DeviceSpec>().unwrap().to_string(), "cuda:0");
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec(Device::Cuda(3)));
        assert!("gpu".parse::<DeviceSpec>().unwrap_err().contains("cpu, cuda or cuda:N"));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn a_missing_cuda_device_says_which_build_this_is() {
        if tch::Cuda::device_count() > 7 {
            return;
        }
        let message = DeviceSpec(Device::Cuda(7)).available().unwrap_err().to_string();
        let expected = if cfg!(feature = "cuda") { "this CUDA build sees" } else { "built without CUDA support" };
        assert!(message.contains(expected), "{message}");
        assert_eq!(DeviceSpec::CPU.available().unwrap(), Device::Cpu);
    }
}
