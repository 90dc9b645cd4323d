//! Where the models run: `--device auto|cpu|cuda[:N]`.
//!
//! `auto` takes GPU 0 when this binary was built with the `cuda` feature and
//! a device answers, else the CPU; the caller logs [`ChosenDevice::describe`]
//! so an operator can see which one it got (a silent CPU fallback on a GPU
//! host would look like a slow GPU).

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{EeError, Result};

/// The device asked for on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A GPU when there is one, else the CPU.
    #[default]
    Auto,
    /// The CPU, even when a GPU is present.
    Cpu,
    /// The CUDA GPU with this ordinal; an error when it does not answer.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = EeError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(EeError::InvalidArgument(format!(
                    "unknown device {s:?}: expected auto, cpu, cuda or cuda:N"
                ))),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A resolved device and how it was chosen.
#[derive(Clone, Debug)]
pub struct ChosenDevice {
    /// The candle device.
    pub device: Device,
    /// What was asked for.
    pub asked: DeviceChoice,
    /// Why `auto` fell back to the CPU, when it did.
    pub fallback: Option<String>,
}

impl ChosenDevice {
    /// Whether the models run on a GPU.
    pub fn is_gpu(&self) -> bool {
        self.device.is_cuda()
    }

    /// One line for the start-up log, e.g. `cuda:0 (asked: auto)` or
    /// `cpu (asked: auto; this binary was built without CUDA)`.
    pub fn describe(&self) -> String {
        let name = match &self.device {
            Device::Cuda(_) => match self.asked {
                DeviceChoice::Cuda(n) => format!("cuda:{n}"),
                _ => "cuda:0".to_string(),
            },
            Device::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
            Device::Metal(_) => "metal".to_string(),
        };
        match &self.fallback {
            Some(why) => format!("{name} (asked: {}; {why})", self.asked),
            None => format!("{name} (asked: {})", self.asked),
        }
    }
}

/// Whether this binary was built with the `cuda` feature.
pub const fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// Resolves `choice` to a device: `auto` never fails, `cuda:N` fails with a
/// clear error when this binary has no CUDA or the GPU does not answer.
pub fn select(choice: DeviceChoice) -> Result<ChosenDevice> {
    let chosen = |device, fallback| ChosenDevice {
        device,
        asked: choice,
        fallback,
    };
    match choice {
        DeviceChoice::Cpu => Ok(chosen(Device::Cpu, None)),
        DeviceChoice::Cuda(n) => {
            if !cuda_compiled() {
                return Err(EeError::InvalidArgument(format!(
                    "--device {choice}: this binary was built without CUDA \
                     (rebuild with `--features cuda`, see docs/gpu.md)"
                )));
            }
            let device = Device::new_cuda(n).map_err(|e| {
                EeError::Model(format!(
                    "--device {choice}: no CUDA device answered: {}",
                    first_line(&e)
                ))
            })?;
            Ok(chosen(device, None))
        }
        DeviceChoice::Auto => {
            if !cuda_compiled() {
                return Ok(chosen(
                    Device::Cpu,
                    Some("this binary was built without CUDA".into()),
                ));
            }
            // A CUDA build on a host without a driver or GPU fails here, and
            // may panic inside the CUDA bindings: either way, use the CPU.
            match std::panic::catch_unwind(|| Device::new_cuda(0)) {
                Ok(Ok(device)) => Ok(chosen(device, None)),
                Ok(Err(e)) => Ok(chosen(
                    Device::Cpu,
                    Some(format!("no CUDA device answered: {}", first_line(&e))),
                )),
                Err(_) => Ok(chosen(
                    Device::Cpu,
                    Some("the CUDA driver could not be initialised".into()),
                )),
            }
        }
    }
}

/// The error without the backtrace candle appends under RUST_BACKTRACE.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        for bad in ["", "CUDA", "cuda:", "cuda:x", "cuda:-1", "metal", "tpu"] {
            let err = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(
                err.contains("expected auto, cpu, cuda or cuda:N"),
                "{bad}: {err}"
            );
        }
        for choice in [DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda(2)] {
            assert_eq!(choice.to_string().parse::<DeviceChoice>().unwrap(), choice);
        }
    }

    #[test]
    fn cpu_is_always_available_and_auto_falls_back_to_it() {
        let cpu = select(DeviceChoice::Cpu).unwrap();
        assert!(!cpu.is_gpu() && cpu.fallback.is_none());
        let auto = select(DeviceChoice::Auto).unwrap();
        if !auto.is_gpu() {
            // Says why it is not on a GPU.
            assert!(auto.fallback.is_some(), "{}", auto.describe());
            assert!(auto.describe().starts_with("cpu"), "{}", auto.describe());
        }
    }

    #[test]
    fn cuda_without_cuda_is_a_clear_error() {
        if cuda_compiled() {
            return;
        }
        let err = select(DeviceChoice::Cuda(0)).unwrap_err().to_string();
        assert!(err.contains("built without CUDA"), "{err}");
    }
}
