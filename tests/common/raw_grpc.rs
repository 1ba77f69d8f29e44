//! Sending hand-built protobuf bytes to a gRPC method, for requests the generated types cannot
//! express (invalid UTF-8 in a `string`, negative numbers in a `uint32`, broken wire format).

#![allow(dead_code)]

use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Sends message bytes as they are; answers are returned as bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

/// Calls the unary method `path` (e.g. `/gitcap.v1.Captioner/Caption`) with `message` as its
/// encoded request.
pub async fn unary(channel: Channel, path: &'static str, message: Vec<u8>) -> Result<Response<Vec<u8>>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    grpc.unary(Request::new(message), PathAndQuery::from_static(path), RawCodec).await
}

/// Protobuf wire format, by hand.
pub mod wire {
    pub fn varint(mut value: u64) -> Vec<u8> {
        let mut out = vec![];
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    /// A varint field (wire type 0).
    pub fn uint(field: u32, value: u64) -> Vec<u8> {
        [varint(u64::from(field) << 3), varint(value)].concat()
    }

    /// A length-delimited field (wire type 2): bytes, strings, messages.
    pub fn bytes(field: u32, data: &[u8]) -> Vec<u8> {
        [varint((u64::from(field) << 3) | 2), varint(data.len() as u64), data.to_vec()].concat()
    }

    /// A 32-bit field (wire type 5): floats.
    pub fn fixed32(field: u32, value: u32) -> Vec<u8> {
        [varint((u64::from(field) << 3) | 5), value.to_le_bytes().to_vec()].concat()
    }
}
