//! The codec of every service generated here: prost's, except that bytes
//! that do not decode as the expected message are the sender's fault and
//! become `invalid_argument` (tonic's default is `internal`, which tells the
//! caller the server broke).

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// [`ProstCodec`], with decode errors as `invalid_argument`.
#[derive(Debug, Clone, Default)]
pub struct LbCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Codec for LbCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LbDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        LbDecoder(self.0.decoder())
    }
}

/// [`ProstDecoder`], with decode errors as `invalid_argument`.
#[derive(Debug, Clone, Default)]
pub struct LbDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for LbDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| {
            if s.code() == Code::Internal {
                Status::invalid_argument(format!("undecodable message: {}", s.message()))
            } else {
                s
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
