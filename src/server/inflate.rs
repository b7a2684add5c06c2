//! The worker's side of permessage-deflate: inflating a compressed message with the
//! worker's shared decompressor before the handler sees it, and freeing `dedicated`
//! compressors of connections gone quiet.

#[cfg(feature = "deflate")]
use super::connection::Connection;
use super::connection::Ctx;
use super::handler::Handler;
#[cfg(feature = "deflate")]
use super::handler::Message;
use super::worker::Worker;

impl Ctx {
    /// Drops what a closed connection held of the worker's deflate state: its dedicated
    /// compressor and a message half inflated. By key alone: a closed session no
    /// longer says what it negotiated, and the key's next connection must start clean
    /// (regression: `a_closed_connection_leaves_no_deflate_state_to_its_key`).
    #[cfg(feature = "deflate")]
    pub(super) fn forget_deflate(&mut self, key: u32) {
        if let Some(codec) = self.deflate.as_mut() {
            codec.forget(key);
            super::connection::forget_context(&mut self.dedicated, &self.metrics, key);
        }
    }
}

impl<H: Handler> Worker<H> {
    /// Frees the dedicated compressors of connections that sent nothing compressed for
    /// `compression_idle`; re-armed every `compression_idle` while any is held, so one
    /// is freed between once and twice that after its last message.
    #[cfg(feature = "deflate")]
    pub(super) fn sweep_dedicated(&mut self) {
        let ctx = &mut self.ctx;
        let Some(d) = ctx.dedicated.as_mut() else {
            return;
        };
        d.sweep(ctx.now_ns);
        ctx.metrics.deflate_dedicated_contexts.set(d.len() as u64);
        ctx.metrics.deflate_dedicated_bytes.set(d.bytes());
        d.sweep_armed = d.len() > 0;
        if d.sweep_armed {
            let at = ctx.now_tick as u64 + super::connection::to_ticks(ctx.cfg.compression_idle, ctx.cfg.tick) as u64;
            ctx.wheel.schedule(at, super::connection::TimerEvent::DeflateSweep);
        }
    }

    /// Inflates the next compressed bytes of a message still arriving, as they come; a
    /// part that does not inflate fails the connection at once (1007, 1009).
    #[cold]
    pub(super) fn inflate_part(
        ctx: &mut Ctx,
        core: &mut crate::session::Core,
        meta: &mut super::conn::Meta,
        key: u32,
        text: bool,
        payload: &[u8],
    ) {
        #[cfg(feature = "deflate")]
        if let Some(codec) = ctx.deflate.as_mut() {
            if let Err(e) = codec.inflate_part(key, payload, text, ctx.scfg.decoder.max_message) {
                log::info!("closing {}: {}", meta.ip(), e.reason());
                core.fail_protocol(e, &mut ctx.wpool, ctx.now_tick);
                ctx.mark_dirty(meta, key);
            }
            return;
        }
        // Compressed input without a decompressor cannot be negotiated.
        let _ = (text, payload);
        core.fail_protocol(crate::proto::ProtocolError::ReservedBits, &mut ctx.wpool, ctx.now_tick);
        ctx.mark_dirty(meta, key);
    }

    /// Inflates a compressed message (its last bytes, when parts came before) and hands
    /// it to the handler; a message that does not inflate fails the connection (1007,
    /// 1009).
    #[cold]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn inflated(
        ctx: &mut Ctx,
        core: &mut crate::session::Core,
        meta: &mut super::conn::Meta,
        user: &mut H::State,
        handler: &mut H,
        key: u32,
        text: bool,
        payload: &[u8],
    ) {
        #[cfg(feature = "deflate")]
        if let Some(mut codec) = ctx.deflate.take() {
            let max = ctx.scfg.decoder.max_message;
            // Out of ctx while the handler runs (it may send, which compresses with the
            // same codec's compressor): the inflater moves aside, no copy.
            let (inflater, r) = match codec.take_partial(key) {
                Some(mut i) => {
                    let r = i.feed(payload, max).and_then(|()| i.finish(max));
                    (Some(i), r)
                }
                None => (None, codec.inflate(payload, text, max)),
            };
            let inflated = match &inflater {
                Some(_) => Vec::new(),
                None => std::mem::take(&mut codec.inflater.inflated),
            };
            ctx.deflate = Some(codec);
            let bytes = inflater.as_ref().map_or(&inflated[..], |i| &i.inflated[..]);
            match r {
                Ok(()) => {
                    let msg = if text {
                        // Validated while inflating.
                        Message::Text(std::str::from_utf8(bytes).unwrap_or_default())
                    } else {
                        Message::Binary(bytes)
                    };
                    let mut c = Connection { core, ctx: &mut *ctx, meta: &mut *meta, key };
                    handler.on_message(&mut c, user, msg);
                }
                Err(e) => {
                    log::info!("closing {}: {}", meta.ip(), e.reason());
                    core.fail_protocol(e, &mut ctx.wpool, ctx.now_tick);
                }
            }
            if let Some(codec) = ctx.deflate.as_mut() {
                match inflater {
                    Some(i) => codec.recycle(i),
                    None => codec.inflater.inflated = inflated,
                }
            }
            ctx.mark_dirty(meta, key);
            return;
        }
        // Compressed input without a decompressor cannot be negotiated.
        let _ = (text, payload, user, handler);
        core.fail_protocol(crate::proto::ProtocolError::ReservedBits, &mut ctx.wpool, ctx.now_tick);
        ctx.mark_dirty(meta, key);
    }
}
