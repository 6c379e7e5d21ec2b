//! Turning raw registers into engineering values: data type, byte order,
//! scale and offset. Pure, so every combination is tested without a device.

use super::config::{DataType, ModbusPoint, WordOrder};
use thiserror::Error;

/// A decoded point: a number, or text for string points.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Number(f64),
    Text(String),
}

#[derive(Debug, Error, PartialEq)]
pub enum DecodeError {
    #[error("needs {needed} registers, the reply held {got}")]
    Short { needed: usize, got: usize },
    #[error("value is not a finite number")]
    NotFinite,
    #[error("text is not printable ASCII")]
    NotAscii,
    /// The device's own "no such value" (a probe not fitted, a figure the
    /// model does not measure): see `ModbusPoint::not_available`.
    #[error("not available (the device answers {0} for a value it does not have)")]
    NotAvailable(f64),
}

/// Puts the bytes of `regs` (big-endian on the wire) into big-endian order
/// according to `order`, so that they can be read as one big-endian number.
/// [`ordered_bytes`] into a buffer, for up to four registers.
fn order_into(regs: &[u16], order: WordOrder, out: &mut [u8; 8]) {
    let n = regs.len();
    for (i, w) in regs.iter().enumerate() {
        let at = if matches!(order, WordOrder::Cdab | WordOrder::Dcba) {
            n - 1 - i
        } else {
            i
        };
        let w = if matches!(order, WordOrder::Badc | WordOrder::Dcba) {
            w.swap_bytes()
        } else {
            *w
        };
        out[at * 2..at * 2 + 2].copy_from_slice(&w.to_be_bytes());
    }
}

fn ordered_bytes(regs: &[u16], order: WordOrder) -> Vec<u8> {
    let mut words: Vec<u16> = regs.to_vec();
    if matches!(order, WordOrder::Cdab | WordOrder::Dcba) {
        words.reverse();
    }
    if matches!(order, WordOrder::Badc | WordOrder::Dcba) {
        for w in &mut words {
            *w = w.swap_bytes();
        }
    }
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// Decodes the registers of a register-table point (its `width()` registers
/// starting at its address): a scaled number, or text.
pub fn decode(point: &ModbusPoint, regs: &[u16]) -> Result<Decoded, DecodeError> {
    if point.data_type == DataType::String {
        let needed = usize::from(point.width());
        if regs.len() < needed {
            return Err(DecodeError::Short {
                needed,
                got: regs.len(),
            });
        }
        return decode_text(&ordered_bytes(&regs[..needed], point.order)).map(Decoded::Text);
    }
    decode_registers(point, regs).map(Decoded::Number)
}

/// ASCII text, NUL-padded or space-padded on the right, as devices store
/// model names and serial numbers.
fn decode_text(bytes: &[u8]) -> Result<String, DecodeError> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let bytes = &bytes[..end];
    if bytes.iter().any(|b| !(0x20..0x7F).contains(b)) {
        return Err(DecodeError::NotAscii);
    }
    Ok(String::from_utf8_lossy(bytes).trim_end().to_owned())
}

/// Decodes a numeric register point into a scaled value.
pub fn decode_registers(point: &ModbusPoint, regs: &[u16]) -> Result<f64, DecodeError> {
    let needed = usize::from(point.width());
    if regs.len() < needed {
        return Err(DecodeError::Short {
            needed,
            got: regs.len(),
        });
    }
    // Numbers are at most four registers: order them on the stack, not in a
    // Vec (this runs for every value the agent reads).
    let mut b = [0u8; 8];
    order_into(&regs[..needed.min(4)], point.order, &mut b);
    let raw: f64 = match point.data_type {
        DataType::Bool => f64::from(u8::from(regs[0] != 0)),
        DataType::Bit => f64::from((regs[0] >> point.bit.unwrap_or(0).min(15)) & 1),
        DataType::Int16 => f64::from(i16::from_be_bytes([b[0], b[1]])),
        DataType::Uint16 => f64::from(u16::from_be_bytes([b[0], b[1]])),
        DataType::Int32 => f64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        DataType::Uint32 => f64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        DataType::Float32 => shortest(f32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        DataType::Int64 => i64::from_be_bytes(b) as f64,
        DataType::Uint64 => u64::from_be_bytes(b) as f64,
        DataType::Float64 => f64::from_be_bytes(b),
        DataType::String => return Err(DecodeError::NotFinite),
    };
    if point.not_available.contains(&raw) {
        return Err(DecodeError::NotAvailable(raw));
    }
    let value = scaled(raw, point.scale) + point.offset;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(DecodeError::NotFinite)
    }
}

/// The f64 nearest the f32's shortest decimal form: 230.1f32 becomes 230.1,
/// not 230.10000610351562, which is what a person reading the meter expects.
fn shortest(x: f32) -> f64 {
    if !x.is_finite() {
        return f64::from(x);
    }
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// `raw × scale`, dividing instead when the scale is 1/n (0.1, 0.01, …): 252 ×
/// 0.1 is 25.200000000000003 in floating point, 252 / 10 is 25.2.
fn scaled(raw: f64, scale: f64) -> f64 {
    let inverse = 1.0 / scale;
    if inverse.abs() >= 1.0 && (inverse - inverse.round()).abs() < 1e-9 {
        raw / inverse.round()
    } else {
        raw * scale
    }
}

/// Decodes a coil or discrete input.
pub fn decode_bit(point: &ModbusPoint, bit: bool) -> f64 {
    scaled(f64::from(u8::from(bit)), point.scale) + point.offset
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::modbus::config::Table;

    fn point(data_type: DataType, order: WordOrder) -> ModbusPoint {
        ModbusPoint {
            id: "p".into(),
            quantity: "q".into(),
            unit: String::new(),
            room: None,
            table: Table::Holding,
            address: 0,
            data_type,
            bit: None,
            length: None,
            order,
            scale: 1.0,
            offset: 0.0,
            not_available: Vec::new(),
            interval: None,
        }
    }

    #[test]
    fn a_sentinel_is_not_available_never_a_value_and_other_raws_decode() {
        let mut p = point(DataType::Int16, WordOrder::Abcd);
        p.scale = 0.1;
        p.not_available = vec![-1.0, 32767.0];
        // -1 would have been -0.1 °C after the scale.
        assert!(matches!(
            decode_registers(&p, &[0xFFFF]),
            Err(DecodeError::NotAvailable(r)) if r == -1.0
        ));
        assert!(matches!(
            decode_registers(&p, &[0x7FFF]),
            Err(DecodeError::NotAvailable(_))
        ));
        assert!(decode_registers(&p, &[0xFFFF])
            .unwrap_err()
            .to_string()
            .starts_with("not available"));
        assert_eq!(decode_registers(&p, &[0xFFFE]).unwrap(), -0.2);
        // The same register read unsigned is 65535, not a sentinel of -1.
        p.data_type = DataType::Uint16;
        assert_eq!(decode_registers(&p, &[0xFFFF]).unwrap(), 6553.5);
    }

    #[test]
    fn ascii_strings_are_trimmed_of_padding() {
        let mut p = point(DataType::String, WordOrder::Abcd);
        p.length = Some(4);
        let regs = [
            u16::from_be_bytes(*b"SD"),
            u16::from_be_bytes(*b"M6"),
            u16::from_be_bytes(*b"30"),
            0,
        ];
        assert_eq!(decode(&p, &regs), Ok(Decoded::Text("SDM630".into())));
        p.order = WordOrder::Badc; // byte-swapped words, as some devices store text
        let swapped = [
            u16::from_be_bytes(*b"DS"),
            u16::from_be_bytes(*b"6M"),
            u16::from_be_bytes(*b"03"),
            0x2020,
        ];
        assert_eq!(decode(&p, &swapped), Ok(Decoded::Text("SDM630".into())));
        assert_eq!(decode(&p, &[0xFFFF, 0, 0, 0]), Err(DecodeError::NotAscii));
    }

    #[test]
    fn float32_in_all_four_orders() {
        // 230.5f32 = 0x43668000: A=0x43 B=0x66 C=0x80 D=0x00
        let cases = [
            (WordOrder::Abcd, [0x4366, 0x8000]),
            (WordOrder::Cdab, [0x8000, 0x4366]),
            (WordOrder::Badc, [0x6643, 0x0080]),
            (WordOrder::Dcba, [0x0080, 0x6643]),
        ];
        for (order, regs) in cases {
            assert_eq!(
                decode_registers(&point(DataType::Float32, order), &regs),
                Ok(230.5),
                "{order:?}"
            );
        }
    }

    #[test]
    fn int16_scaled_by_a_tenth_reads_negative_temperatures() {
        let mut p = point(DataType::Int16, WordOrder::Abcd);
        p.scale = 0.1;
        assert_eq!(decode_registers(&p, &[(-123i16) as u16]), Ok(-12.3));
        assert_eq!(decode_registers(&p, &[252]), Ok(25.2));
    }

    #[test]
    fn sixty_four_bit_values_in_word_swapped_order() {
        let n: u64 = 0x0102_0304_0506_0708;
        let words = [0x0102, 0x0304, 0x0506, 0x0708];
        assert_eq!(
            decode_registers(&point(DataType::Uint64, WordOrder::Abcd), &words),
            Ok(n as f64)
        );
        let swapped = [0x0708, 0x0506, 0x0304, 0x0102];
        assert_eq!(
            decode_registers(&point(DataType::Uint64, WordOrder::Cdab), &swapped),
            Ok(n as f64)
        );
        let x = -1234.5678f64;
        let b = x.to_bits();
        let words = [
            (b >> 48) as u16,
            (b >> 32) as u16,
            (b >> 16) as u16,
            b as u16,
        ];
        assert_eq!(
            decode_registers(&point(DataType::Float64, WordOrder::Abcd), &words),
            Ok(x)
        );
    }

    #[test]
    fn signed_and_unsigned_32_bit() {
        let regs = [0xFFFF, 0xFFFE];
        assert_eq!(
            decode_registers(&point(DataType::Int32, WordOrder::Abcd), &regs),
            Ok(-2.0)
        );
        assert_eq!(
            decode_registers(&point(DataType::Uint32, WordOrder::Abcd), &regs),
            Ok(4_294_967_294.0)
        );
    }

    #[test]
    fn a_bit_of_a_register() {
        let mut p = point(DataType::Bit, WordOrder::Abcd);
        p.bit = Some(2);
        assert_eq!(decode_registers(&p, &[0b0100]), Ok(1.0));
        assert_eq!(decode_registers(&p, &[0b1011]), Ok(0.0));
    }

    #[test]
    fn short_replies_and_nan_are_errors_not_values() {
        assert_eq!(
            decode_registers(&point(DataType::Float32, WordOrder::Abcd), &[1]),
            Err(DecodeError::Short { needed: 2, got: 1 })
        );
        assert_eq!(
            decode_registers(&point(DataType::Float32, WordOrder::Abcd), &[0x7FC0, 0]),
            Err(DecodeError::NotFinite)
        );
    }
}

#[cfg(test)]
mod hostile_registers {
    use super::*;
    use crate::drivers::modbus::config::Table;
    use proptest::prelude::*;

    proptest! {
        /// Any register contents, any type and order: a value, or an error
        /// saying why; never a panic and never a non-finite value.
        #[test]
        fn any_registers_decode_to_a_finite_value_or_an_error(
            regs in proptest::collection::vec(any::<u16>(), 0..10),
            type_ix in 0usize..10,
            order_ix in 0usize..4,
            scale in prop_oneof![Just(1.0f64), Just(0.1), Just(1e300), Just(-0.001)],
        ) {
            let types = [DataType::Bit, DataType::Int16, DataType::Uint16, DataType::Int32, DataType::Uint32,
                DataType::Int64, DataType::Uint64, DataType::Float32, DataType::Float64, DataType::String];
            let orders = [WordOrder::Abcd, WordOrder::Cdab, WordOrder::Badc, WordOrder::Dcba];
            let data_type = types[type_ix];
            let p = ModbusPoint {
                id: "p".into(), quantity: "q".into(), unit: String::new(), room: None,
                table: Table::Holding, address: 0, data_type,
                bit: (data_type == DataType::Bit).then_some(7),
                length: (data_type == DataType::String).then_some(4),
                order: orders[order_ix], scale, offset: 0.0, not_available: vec![-1.0, 32767.0],
                interval: None,
            };
            match decode(&p, &regs) {
                Ok(Decoded::Number(v)) => prop_assert!(v.is_finite()),
                Ok(Decoded::Text(t)) => prop_assert!(t.chars().all(|c| !c.is_control())),
                Err(_) => {}
            }
        }
    }
}
