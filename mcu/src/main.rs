//! The example's program: on a Cortex-M4F (`thumbv7em-none-eabihf`, run under
//! `qemu-system-arm -M mps2-an386`), the captures in flash through the core, each contract
//! message written as a line `topic payload` to semihosting's stdout, and the RAM it used to
//! stderr; built for the host, the same lines to stdout.

#![cfg_attr(target_os = "none", no_std, no_main)]

use embedded_svc::mqtt::client::{ErrorType, MessageId, Publish, QoS};
use tapwatch_mcu::{run, Summary, Uplink};

/// Writes each message as one line: topic, a space, the JSON payload.
#[derive(Debug)]
struct Lines<W> {
    out: W,
    next_id: MessageId,
}

/// The output could not be written.
#[derive(Debug)]
struct WriteFailed;

impl<W: core::fmt::Write> ErrorType for Lines<W> {
    type Error = WriteFailed;
}

impl<W: core::fmt::Write> Publish for Lines<W> {
    fn publish<'a>(
        &'a mut self,
        topic: &'a str,
        _qos: QoS,
        _retain: bool,
        payload: &'a [u8],
    ) -> Result<MessageId, Self::Error> {
        let payload = core::str::from_utf8(payload).map_err(|_| WriteFailed)?;
        writeln!(self.out, "{topic} {payload}").map_err(|_| WriteFailed)?;
        self.next_id = self.next_id.wrapping_add(1);
        Ok(self.next_id)
    }
}

fn summary_line(w: &mut impl core::fmt::Write, name: &str, s: &Summary) -> core::fmt::Result {
    writeln!(
        w,
        "capture {name}: {} packets, {} errors, {} flows, {} anomalies, {} messages",
        s.packets, s.errors, s.flows, s.anomalies, s.messages
    )
}

#[cfg(target_os = "none")]
mod mcu {
    use super::*;
    use core::fmt::Write as _;
    use cortex_m_rt::entry;
    use cortex_m_semihosting::{debug, hio};
    use static_cell::StaticCell;
    use tapwatch_mcu::{empty_batch, engine_config, McuDetector, McuEngine, CAPTURES, MESSAGE_MAX};

    static ENGINE: StaticCell<McuEngine> = StaticCell::new();
    static DETECTOR: StaticCell<McuDetector> = StaticCell::new();
    static BATCH: StaticCell<firmware::proto::FlowBatch> = StaticCell::new();
    static BUF: StaticCell<[u8; MESSAGE_MAX]> = StaticCell::new();

    /// Semihosting's stdout or stderr as `fmt::Write`.
    struct Host(hio::HostStream);
    impl core::fmt::Write for Host {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            self.0.write_all(s.as_bytes()).map_err(|_| core::fmt::Error)
        }
    }

    /// Bytes of RAM the linker gave statics (.data, .bss, .uninit).
    fn static_ram() -> usize {
        extern "C" {
            static __sdata: u8;
            static __euninit: u8;
        }
        // Only the symbols' addresses are taken, never what is there.
        core::ptr::addr_of!(__euninit) as usize - core::ptr::addr_of!(__sdata) as usize
    }

    #[entry]
    fn main() -> ! {
        // Everything below the current frame is painted: what the run overwrites is its stack.
        cortex_m_stack::repaint_stack();
        let code = match go() {
            Ok(()) => debug::EXIT_SUCCESS,
            Err(()) => debug::EXIT_FAILURE,
        };
        debug::exit(code);
        loop {
            cortex_m::asm::wfi();
        }
    }

    fn go() -> Result<(), ()> {
        let mut out = Host(hio::hstdout().map_err(|_| ())?);
        let mut err = Host(hio::hstderr().map_err(|_| ())?);
        let engine = ENGINE.init_with(|| McuEngine::new(engine_config()));
        let detector = DETECTOR.init_with(|| McuDetector::new(Default::default()));
        let batch = BATCH.init_with(empty_batch);
        let buf = BUF.init_with(|| [0; MESSAGE_MAX]);
        let mut up = Uplink::new(Lines { out: &mut out, next_id: 0 }, "mcu-1", batch, buf);
        for c in CAPTURES {
            let s = run(c, engine, detector, &mut up).map_err(|e| {
                let _ = writeln!(err, "capture {}: publish failed: {e:?}", c.name);
            })?;
            summary_line(&mut err, c.name, &s).map_err(|_| ())?;
        }
        let stack =
            cortex_m_stack::stack_size() as usize - cortex_m_stack::stack_painted() as usize;
        let _ = writeln!(
            err,
            "ram: {} bytes static, {} bytes of stack at most (engine {} bytes, detector {} bytes)",
            static_ram(),
            stack,
            core::mem::size_of::<McuEngine>(),
            core::mem::size_of::<McuDetector>()
        );
        Ok(())
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        if let Ok(e) = hio::hstderr() {
            let _ = writeln!(Host(e), "panic: {info}");
        }
        debug::exit(debug::EXIT_FAILURE);
        loop {
            cortex_m::asm::wfi();
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() -> std::process::ExitCode {
    use tapwatch_mcu::{empty_batch, engine_config, McuDetector, McuEngine, CAPTURES, MESSAGE_MAX};

    /// Standard output as `fmt::Write`.
    struct Stdout(std::io::StdoutLock<'static>);
    impl core::fmt::Write for Stdout {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            std::io::Write::write_all(&mut self.0, s.as_bytes()).map_err(|_| core::fmt::Error)
        }
    }

    let mut engine = Box::new(McuEngine::new(engine_config()));
    let mut detector = Box::new(McuDetector::new(Default::default()));
    let mut batch = Box::new(empty_batch());
    let mut buf = vec![0u8; MESSAGE_MAX];
    let mut up = Uplink::new(
        Lines { out: Stdout(std::io::stdout().lock()), next_id: 0 },
        "mcu-1",
        &mut batch,
        &mut buf,
    );
    for c in CAPTURES {
        match run(c, &mut engine, &mut detector, &mut up) {
            Ok(s) => {
                let mut line = String::new();
                let _ = summary_line(&mut line, c.name, &s);
                eprint!("{line}");
            }
            Err(e) => {
                eprintln!("capture {}: publish failed: {e:?}", c.name);
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}
