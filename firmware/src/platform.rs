//! What a platform gives the core: a way to publish contract messages, and over-the-air update.
//!
//! The traits are embedded-svc's, so an ESP-IDF or other MCU build brings its own MQTT client and
//! OTA implementation, and the Linux daemon implements the same traits over rumqttc and its
//! A/B image slots. The core encodes with `serde-json-core`: no heap, no `std`.

use crate::proto::{topic, Stream};
pub use embedded_svc::mqtt::client::{Enqueue, Publish, QoS};
pub use embedded_svc::ota::Ota;

/// Why a message could not be handed to the platform's MQTT client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkError<E> {
    /// The device id is not a valid topic level.
    DeviceId,
    /// The message did not fit the encoding buffer.
    Encode,
    /// The MQTT client refused it.
    Client(E),
}

/// Encode `msg` as JSON into `buf` and publish it on the device's topic for `stream`, QoS 1
/// (at least once: the hub deduplicates on device, stream and seq).
pub fn publish<P, T>(
    client: &mut P,
    device: &str,
    stream: Stream,
    msg: &T,
    buf: &mut [u8],
) -> Result<(), UplinkError<P::Error>>
where
    P: Publish,
    T: serde::Serialize,
{
    let topic = topic(device, stream).ok_or(UplinkError::DeviceId)?;
    let n = serde_json_core::to_slice(msg, buf).map_err(|_| UplinkError::Encode)?;
    client
        .publish(&topic, QoS::AtLeastOnce, stream == Stream::Status, &buf[..n])
        .map(|_| ())
        .map_err(UplinkError::Client)
}
