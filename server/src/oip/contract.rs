//! GIT's tensor contract: which tensors and parameters an inference request of the Open
//! Inference Protocol carries, how they read into the core's request, and which tensors its
//! answer is written as. Both transports (grpc.rs, rest.rs) read their wire format into
//! [`InferRequest`] and write [`OutputTensor`]s back; everything about GIT is here.
//!
//! - Inputs, all BYTES: exactly one of `image` (shape [1], an encoded image), `frames` ([n], a
//!   video's encoded frames) or `video` ([1], a video file); optionally `question` ([1], UTF-8).
//! - Parameters: every field of `GenerationOptions` by its name (gitcap_protocol's one
//!   definition), and `priority` (`"interactive"` / `"batch"`, or 1 / 2 as gitcap's protocol
//!   numbers them); anything else is refused by name.
//! - Outputs: `text` (BYTES [1]), `token_ids` (INT64 [n]), `finish_reason` (BYTES [1]: `eos` or
//!   `length`) and, for a video file, `frame_timestamps_s` (FP64 [n]).

use std::collections::BTreeSet;

use clap::Args;
use gitcap_protocol::{GenerationOptions, Priority};

use crate::error::{GitcapError, Result};
use crate::media::MediaLimits;
use crate::model::generation::FinishReason;
use crate::service::media::MediaInput;

/// The platform ModelMetadata reports.
pub const PLATFORM: &str = "gitcap_git";

/// A tensor's name, datatype and shape (-1: any length), as ModelMetadata states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: [i64; 1],
}

const fn spec(name: &'static str, datatype: &'static str, length: i64) -> TensorSpec {
    TensorSpec { name, datatype, shape: [length] }
}

pub const IMAGE: TensorSpec = spec("image", "BYTES", 1);
pub const FRAMES: TensorSpec = spec("frames", "BYTES", -1);
pub const VIDEO: TensorSpec = spec("video", "BYTES", 1);
pub const QUESTION: TensorSpec = spec("question", "BYTES", 1);
/// Every input; one media input (`image`, `frames` or `video`) is required.
pub const INPUTS: [TensorSpec; 4] = [IMAGE, FRAMES, VIDEO, QUESTION];

/// The outputs a request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    TokenIds,
    FinishReason,
    FrameTimestamps,
}

impl Output {
    pub const ALL: [Output; 4] = [Output::Text, Output::TokenIds, Output::FinishReason, Output::FrameTimestamps];

    pub fn spec(self) -> TensorSpec {
        match self {
            Output::Text => spec("text", "BYTES", 1),
            Output::TokenIds => spec("token_ids", "INT64", -1),
            Output::FinishReason => spec("finish_reason", "BYTES", 1),
            Output::FrameTimestamps => spec("frame_timestamps_s", "FP64", -1),
        }
    }

    fn named(name: &str) -> Option<Output> {
        Output::ALL.into_iter().find(|o| o.spec().name == name)
    }
}

/// The request parameter naming the priority.
pub const PRIORITY: &str = "priority";

/// Every request parameter: the generation options as gitcap_protocol defines them (so a new
/// option reaches this door without a change here), then `priority`. Read once.
pub fn parameter_names() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let command = GenerationOptions::augment_args(clap::Command::new("options"));
        let mut names: Vec<String> = command.get_arguments().map(|a| a.get_id().to_string()).collect();
        names.push(PRIORITY.to_string());
        names
    })
}

/// A parameter's value, as either transport carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(String),
}

/// An input tensor's elements: BYTES elements, or the number of elements of another datatype
/// (never used: only BYTES inputs exist, but the count makes the error exact).
#[derive(Debug, Clone, PartialEq)]
pub enum Elements {
    Bytes(Vec<Vec<u8>>),
    Other(usize),
}

/// One input tensor as a transport read it.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub elements: Elements,
}

/// An inference request as a transport read it, before GIT's contract is applied. Parameters
/// that belong to a transport (REST's `binary_data_output`) are taken out by it first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InferRequest {
    pub inputs: Vec<InputTensor>,
    pub parameters: Vec<(String, Param)>,
    /// The outputs asked for, by name, in order; empty: every output.
    pub outputs: Vec<String>,
}

/// A request in the core's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub media: MediaInput,
    pub question: String,
    pub options: GenerationOptions,
    pub priority: Priority,
    /// The outputs to write, in order; `None`: every output that applies.
    pub outputs: Option<Vec<Output>>,
}

/// The number of elements a shape holds; `None` for a negative dimension or an overflow.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| usize::try_from(d).ok().and_then(|d| n.checked_mul(d)))
}

/// How an error names input number `index`: by its name when the contract has an input of that
/// name, else by position (a caller's name may be anything, the empty string included).
pub fn input_field(index: usize, name: &str) -> String {
    if INPUTS.iter().any(|s| s.name == name) {
        name.to_string()
    } else {
        format!("inputs[{index}]")
    }
}

/// Reads `request` by GIT's contract; `limits` bounds the frames.
pub fn read(request: InferRequest, limits: &MediaLimits) -> Result<Reading> {
    let mut media = None;
    let mut question = String::new();
    let mut seen = BTreeSet::new();
    for (i, tensor) in request.inputs.into_iter().enumerate() {
        let name = tensor.name.clone();
        // By position: the name may be anything, the empty string included.
        let Some(spec) = INPUTS.iter().find(|s| s.name == name) else {
            return Err(GitcapError::invalid(
                format!("inputs[{i}]"),
                format!(
                    "{name:?} is not an input of this model; its inputs are image, frames or video (one of them) and question (optional)"
                ),
            ));
        };
        if !seen.insert(name.clone()) {
            return Err(GitcapError::invalid(format!("inputs[{i}]"), format!("the input {name:?} is given twice")));
        }
        let mut elements = elements_of(tensor, spec, limits)?;
        let input = match spec.name {
            "image" => MediaInput::Image(elements.remove(0)),
            "frames" => MediaInput::Frames(elements),
            "video" => MediaInput::Video { bytes: elements.remove(0), sampling: None },
            _ => {
                let text = String::from_utf8(elements.remove(0))
                    .map_err(|_| GitcapError::invalid("question", "the question is not UTF-8 text"))?;
                question = text;
                continue;
            }
        };
        if let Some((other, _)) = media.replace((spec.name, input)) {
            return Err(GitcapError::invalid(
                spec.name,
                format!("give one of image, frames or video; this request also has {other}"),
            ));
        }
    }
    let Some((_, media)) = media else {
        return Err(GitcapError::invalid("inputs", "give one of the inputs image, frames or video (BYTES)"));
    };
    let (options, priority) = parameters(request.parameters)?;
    let outputs = if request.outputs.is_empty() {
        None
    } else {
        let mut wanted = Vec::with_capacity(request.outputs.len());
        for (i, name) in request.outputs.iter().enumerate() {
            let output = Output::named(name).ok_or_else(|| {
                GitcapError::invalid(
                    format!("outputs[{i}]"),
                    format!("`{name}` is not an output of this model; its outputs are text, token_ids, finish_reason and frame_timestamps_s"),
                )
            })?;
            if wanted.contains(&output) {
                return Err(GitcapError::invalid(format!("outputs[{i}]"), format!("`{name}` is asked for twice")));
            }
            wanted.push(output);
        }
        Some(wanted)
    };
    Ok(Reading { media, question, options, priority, outputs })
}

/// A tensor's BYTES elements, once its datatype and shape are those of `spec`.
fn elements_of(tensor: InputTensor, spec: &TensorSpec, limits: &MediaLimits) -> Result<Vec<Vec<u8>>> {
    let name = spec.name;
    if tensor.datatype != spec.datatype {
        return Err(GitcapError::invalid(
            name,
            format!("the datatype is {:?}; this input is {} (encoded bytes)", tensor.datatype, spec.datatype),
        ));
    }
    let wrong_shape = || {
        let wanted = if spec.shape[0] < 0 { "[n]".to_string() } else { format!("{:?}", spec.shape) };
        GitcapError::invalid(name, format!("the shape is {:?}; this input's shape is {wanted}", tensor.shape))
    };
    let count = match tensor.shape.as_slice() {
        [n] if *n >= 1 && (spec.shape[0] < 0 || *n == spec.shape[0]) => *n as u64,
        _ => return Err(wrong_shape()),
    };
    if name == FRAMES.name && count > limits.max_frames as u64 {
        return Err(GitcapError::invalid(
            name,
            format!("{count} frames is more than the limit of {} (limits.max_frames)", limits.max_frames),
        ));
    }
    let elements = match tensor.elements {
        Elements::Bytes(elements) => elements,
        Elements::Other(_) => return Err(GitcapError::invalid(name, "the tensor has no BYTES contents")),
    };
    if elements.len() as u64 != count {
        return Err(GitcapError::invalid(
            name,
            format!("the shape {:?} holds {count} elements, the data {}", tensor.shape, elements.len()),
        ));
    }
    Ok(elements)
}

/// The generation options and priority of a request's parameters; each one known by name.
fn parameters(parameters: Vec<(String, Param)>) -> Result<(GenerationOptions, Priority)> {
    let mut options = serde_json::Map::new();
    let mut priority = Priority::Interactive;
    let known = parameter_names();
    for (name, value) in parameters {
        let field = format!("parameters.{name}");
        if name == PRIORITY {
            priority = priority_of(&value).map_err(|message| GitcapError::invalid(&field, message))?;
            continue;
        }
        if !known.contains(&name) {
            return Err(GitcapError::invalid(
                field,
                format!("not a parameter of this model; its parameters are {}", known.join(", ")),
            ));
        }
        // Each option on its own, so that a value of the wrong type is refused by its name.
        let json = json_value(value);
        let single = serde_json::Value::Object([(name.clone(), json.clone())].into_iter().collect());
        serde_json::from_value::<GenerationOptions>(single)
            .map_err(|e| GitcapError::invalid(&field, format!("{e} (got {json})")))?;
        options.insert(name, json);
    }
    let options = serde_json::from_value(serde_json::Value::Object(options)).expect("each option parsed on its own");
    Ok((options, priority))
}

/// A parameter as JSON, for the options' one definition to read: a whole double is an
/// integer (JSON has one number type, and a REST client may write `20.0`).
fn json_value(value: Param) -> serde_json::Value {
    match value {
        Param::Bool(b) => b.into(),
        Param::Int(n) => n.into(),
        Param::UInt(n) => n.into(),
        Param::Double(x) if x.fract() == 0.0 && x.abs() < 2f64.powi(53) => (x as i64).into(),
        Param::Double(x) => serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, Into::into),
        Param::Str(s) => s.into(),
    }
}

/// `"interactive"` / `"batch"`, or gitcap's protocol numbers (0 and 1 interactive, 2 batch:
/// tritonclient's integer `priority`, where 0 is the default and 1 the highest).
fn priority_of(value: &Param) -> std::result::Result<Priority, String> {
    let number = match value {
        Param::Str(s) => {
            return match s.as_str() {
                "interactive" => Ok(Priority::Interactive),
                "batch" => Ok(Priority::Batch),
                other => Err(format!("{other:?} is not a priority; use \"interactive\" or \"batch\"")),
            }
        }
        Param::Int(n) => i32::try_from(*n).ok(),
        Param::UInt(n) => i32::try_from(*n).ok(),
        _ => None,
    };
    let number = number.ok_or_else(|| format!("{value:?} is not a priority; use \"interactive\" or \"batch\""))?;
    Priority::from_wire(number)
}

/// An output tensor's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    Bytes(Vec<Vec<u8>>),
    Int64(Vec<i64>),
    Fp64(Vec<f64>),
}

/// An output tensor, ready for either transport to write.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    pub data: OutputData,
}

/// What of an answer the outputs are written from.
pub struct Generated<'a> {
    pub text: &'a str,
    pub token_ids: &'a [i64],
    pub finish_reason: FinishReason,
    /// The frames' timestamps, for a video file (empty otherwise).
    pub timestamps_s: &'a [f64],
}

/// The output tensors of an answer: those asked for, in order, or every one that applies
/// (`frame_timestamps_s` only for a video file).
pub fn write(generated: &Generated, outputs: Option<&[Output]>) -> Vec<OutputTensor> {
    let all: Vec<Output> = Output::ALL
        .into_iter()
        .filter(|o| *o != Output::FrameTimestamps || !generated.timestamps_s.is_empty())
        .collect();
    outputs
        .unwrap_or(&all)
        .iter()
        .map(|output| {
            let spec = output.spec();
            let data = match output {
                Output::Text => OutputData::Bytes(vec![generated.text.as_bytes().to_vec()]),
                Output::TokenIds => OutputData::Int64(generated.token_ids.to_vec()),
                Output::FinishReason => OutputData::Bytes(vec![finish_reason(generated.finish_reason).into()]),
                Output::FrameTimestamps => OutputData::Fp64(generated.timestamps_s.to_vec()),
            };
            let length = match &data {
                OutputData::Bytes(v) => v.len(),
                OutputData::Int64(v) => v.len(),
                OutputData::Fp64(v) => v.len(),
            };
            OutputTensor { name: spec.name, datatype: spec.datatype, shape: vec![length as i64], data }
        })
        .collect()
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos => "eos",
        FinishReason::Length => "length",
    }
}

/// An error in the protocol's terms: the core names fields as gitcap's gRPC protocol does
/// (`media.frames[2]`, `options.num_beams`); here they are the input (`frames[2]`) or the
/// parameter (`parameters.num_beams`).
pub fn in_oip_terms(error: GitcapError) -> GitcapError {
    let rename = |field: String| {
        if let Some(option) = field.strip_prefix("options.") {
            format!("parameters.{option}")
        } else if let Some(input) = field.strip_prefix("media.") {
            input.to_string()
        } else {
            field
        }
    };
    match error {
        GitcapError::InvalidArgument { field, message } => {
            GitcapError::InvalidArgument { field: rename(field), message }
        }
        GitcapError::Media { field, message } => GitcapError::Media { field: rename(field), message },
        other => other,
    }
}

/// BYTES elements in the protocol's raw (binary) layout: each a 4-byte little-endian length,
/// then its bytes.
pub fn encode_bytes(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(elements.iter().map(|e| e.len() + 4).sum());
    for element in elements {
        raw.extend_from_slice(&(element.len() as u32).to_le_bytes());
        raw.extend_from_slice(element);
    }
    raw
}

/// The BYTES elements of a raw tensor (see [`encode_bytes`]) of input `name`.
pub fn decode_bytes(name: &str, raw: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut elements = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let Some((length, tail)) = rest.split_first_chunk::<4>() else {
            return Err(GitcapError::invalid(name, "the raw BYTES data ends inside an element's 4-byte length"));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if length > tail.len() {
            return Err(GitcapError::invalid(
                name,
                format!("a raw BYTES element claims {length} bytes, but only {} follow", tail.len()),
            ));
        }
        let (element, tail) = tail.split_at(length);
        elements.push(element.to_vec());
        rest = tail;
    }
    Ok(elements)
}

/// Raw (binary) bytes of an output tensor.
pub fn encode_raw(data: &OutputData) -> Vec<u8> {
    match data {
        OutputData::Bytes(elements) => encode_bytes(elements),
        OutputData::Int64(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        OutputData::Fp64(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(name: &str, shape: Vec<i64>, elements: Vec<&[u8]>) -> InputTensor {
        InputTensor {
            name: name.into(),
            datatype: "BYTES".into(),
            shape,
            elements: Elements::Bytes(elements.into_iter().map(<[u8]>::to_vec).collect()),
        }
    }

    fn field(error: GitcapError) -> String {
        match error {
            GitcapError::InvalidArgument { field, .. } => field,
            other => panic!("not a field error: {other}"),
        }
    }

    fn read_one(inputs: Vec<InputTensor>, parameters: Vec<(&str, Param)>) -> Result<Reading> {
        let parameters = parameters.into_iter().map(|(n, v)| (n.to_string(), v)).collect();
        read(InferRequest { inputs, parameters, outputs: vec![] }, &MediaLimits::default())
    }

    #[test]
    fn reads_media_question_options_and_priority() {
        let reading = read_one(
            vec![bytes("image", vec![1], vec![b"png"]), bytes("question", vec![1], vec![b"what is it?"])],
            vec![
                ("max_new_tokens", Param::Int(7)),
                ("temperature", Param::Double(0.5)),
                ("early_stopping", Param::Str("never".into())),
                ("do_sample", Param::Bool(false)),
                ("seed", Param::UInt(3)),
                ("num_beams", Param::Double(2.0)),
                ("priority", Param::Str("batch".into())),
            ],
        )
        .unwrap();
        assert_eq!(reading.media, MediaInput::Image(b"png".to_vec()));
        assert_eq!(reading.question, "what is it?");
        assert_eq!(reading.options.max_new_tokens, Some(7));
        assert_eq!(reading.options.temperature, Some(0.5));
        assert_eq!(reading.options.num_beams, Some(2));
        assert_eq!(reading.options.seed, Some(3));
        assert_eq!(reading.options.early_stopping, Some(gitcap_protocol::EarlyStopping::Never));
        assert_eq!(reading.priority, Priority::Batch);
        let frames = read_one(vec![bytes("frames", vec![2], vec![b"a", b"b"])], vec![("priority", Param::UInt(1))]);
        let frames = frames.unwrap();
        assert_eq!(frames.media, MediaInput::Frames(vec![b"a".to_vec(), b"b".to_vec()]));
        assert_eq!(frames.priority, Priority::Interactive);
    }

    #[test]
    fn every_generation_option_is_a_parameter() {
        let all = serde_json::to_value(GenerationOptions {
            max_new_tokens: Some(1),
            min_new_tokens: Some(1),
            num_beams: Some(1),
            length_penalty: Some(1.0),
            early_stopping: Some(gitcap_protocol::EarlyStopping::Yes),
            do_sample: Some(true),
            temperature: Some(1.0),
            top_k: Some(1),
            top_p: Some(1.0),
            seed: Some(1),
            repetition_penalty: Some(1.0),
            no_repeat_ngram_size: Some(1),
            top_logprobs: Some(1),
        })
        .unwrap();
        let names = parameter_names();
        for option in all.as_object().unwrap().keys() {
            assert!(names.contains(option), "{option} is not a parameter: {names:?}");
        }
    }

    #[test]
    fn names_the_input_or_parameter_at_fault() {
        let image = || bytes("image", vec![1], vec![b"x"]);
        let wrong_type = InputTensor { datatype: "FP32".into(), elements: Elements::Other(1), ..image() };
        type Case = (Vec<InputTensor>, Vec<(&'static str, Param)>, &'static str);
        let cases: Vec<Case> = vec![
            (vec![wrong_type], vec![], "image"),
            (vec![bytes("image", vec![2], vec![b"x", b"y"])], vec![], "image"),
            (vec![bytes("image", vec![1, 1], vec![b"x"])], vec![], "image"),
            (vec![bytes("frames", vec![3], vec![b"x"])], vec![], "frames"),
            (vec![bytes("frames", vec![65], vec![b"x"; 65])], vec![], "frames"),
            (vec![image(), bytes("pixels", vec![1], vec![b"x"])], vec![], "inputs[1]"),
            // Found by the fuzzer: a field must never be empty.
            (vec![bytes("", vec![1], vec![b"x"])], vec![], "inputs[0]"),
            (vec![image(), bytes("video", vec![1], vec![b"x"])], vec![], "video"),
            (vec![image(), image()], vec![], "inputs[1]"),
            (vec![bytes("question", vec![1], vec![b"q"])], vec![], "inputs"),
            (vec![image(), bytes("question", vec![1], vec![b"\xff"])], vec![], "question"),
            (vec![image()], vec![("beams", Param::Int(2))], "parameters.beams"),
            (vec![image()], vec![("num_beams", Param::Str("two".into()))], "parameters.num_beams"),
            (vec![image()], vec![("max_new_tokens", Param::Int(-1))], "parameters.max_new_tokens"),
            (vec![image()], vec![("priority", Param::Str("urgent".into()))], "parameters.priority"),
            (vec![image()], vec![("priority", Param::Int(9))], "parameters.priority"),
        ];
        for (inputs, parameters, expected) in cases {
            let error = read_one(inputs.clone(), parameters).unwrap_err();
            assert_eq!(field(error), expected, "{inputs:?}");
        }
        let request = InferRequest { inputs: vec![image()], parameters: vec![], outputs: vec!["caption".into()] };
        assert_eq!(field(read(request, &MediaLimits::default()).unwrap_err()), "outputs[0]");
    }

    #[test]
    fn raw_bytes_round_trip_and_truncation_is_refused() {
        let elements = vec![b"abc".to_vec(), vec![], vec![0xff; 300]];
        assert_eq!(decode_bytes("frames", &encode_bytes(&elements)).unwrap(), elements);
        let raw = encode_bytes(&elements);
        assert_eq!(field(decode_bytes("frames", &raw[..raw.len() - 1]).unwrap_err()), "frames");
        assert_eq!(field(decode_bytes("frames", &[1, 0]).unwrap_err()), "frames");
        assert_eq!(element_count(&[2, 3]), Some(6));
        assert_eq!(element_count(&[-1]), None);
        assert_eq!(element_count(&[i64::MAX, i64::MAX]), None);
    }

    #[test]
    fn writes_the_outputs_asked_for() {
        let generated =
            Generated { text: "a cat", token_ids: &[5, 102], finish_reason: FinishReason::Eos, timestamps_s: &[] };
        let names: Vec<&str> = write(&generated, None).iter().map(|t| t.name).collect();
        assert_eq!(names, ["text", "token_ids", "finish_reason"]);
        let only = write(&generated, Some(&[Output::TokenIds]));
        assert_eq!(only[0].data, OutputData::Int64(vec![5, 102]));
        assert_eq!(encode_raw(&only[0].data), [5i64.to_le_bytes(), 102i64.to_le_bytes()].concat());
        let video = Generated { timestamps_s: &[0.5, 1.5], ..generated };
        assert_eq!(write(&video, None).len(), 4);
        let error = GitcapError::invalid("options.num_beams", "too many");
        assert_eq!(field(in_oip_terms(error)), "parameters.num_beams");
        assert_eq!(field(in_oip_terms(GitcapError::invalid("media.frames[2]", "bad"))), "frames[2]");
    }
}
