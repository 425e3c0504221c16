'use strict';

const { randomUUID } = require('crypto');

/**
 * Emits the input body plus `stampedBy: "node"` and a record of what this step received,
 * so the Rust side can check what the official Sailor decrypted. A body with `explode`
 * makes the action throw (Sailor publishes an error envelope and rejects the input).
 *
 * The message is built as elasticio-node's `messages.newMessageWithBody` builds it: with
 * a fresh `id`, which Sailor uses as the outgoing `messageId` header.
 */
async function stamp(msg, cfg) {
    const body = msg.body || {};
    if (body.explode) {
        const error = new Error(`node step ${process.env.ELASTICIO_STEP_ID} exploded: ${body.explode}`);
        error.name = 'NodeExplosion';
        throw error;
    }
    return {
        id: randomUUID(),
        body: {
            ...body,
            stampedBy: 'node',
            nodeSaw: {
                step: process.env.ELASTICIO_STEP_ID,
                label: cfg.label,
                id: msg.id,
                headers: msg.headers || {},
                passthroughSteps: Object.keys(msg.passthrough || {}).sort()
            }
        },
        attachments: {},
        headers: {},
        metadata: {}
    };
}

exports.process = stamp;
