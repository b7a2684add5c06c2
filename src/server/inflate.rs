//! The worker's side of permessage-deflate on receive: inflating a compressed message
//! with the worker's shared decompressor before the handler sees it.

#[cfg(feature = "deflate")]
use super::connection::Connection;
use super::connection::Ctx;
use super::handler::Handler;
#[cfg(feature = "deflate")]
use super::handler::Message;
use super::worker::Worker;

impl<H: Handler> Worker<H> {
    /// Inflates a compressed message with the worker's decompressor and hands it to the
    /// handler; a message that does not inflate fails the connection (1007, 1009).
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
            let r = codec.inflate(payload, text, ctx.scfg.decoder.max_message);
            // Out of ctx while the handler runs (it may send, which compresses with the
            // same codec's compressor): the inflated bytes move aside, no copy.
            let inflated = std::mem::take(&mut codec.inflated);
            ctx.deflate = Some(codec);
            match r {
                Ok(()) => {
                    let msg = if text {
                        // Validated while inflating.
                        Message::Text(std::str::from_utf8(&inflated).unwrap_or_default())
                    } else {
                        Message::Binary(&inflated)
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
                codec.inflated = inflated;
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
