'use strict';

const { randomUUID } = require('crypto');

/**
 * Emits the keys in the input body as `updateKeys` (Sailor turns that into
 * `PUT {API_URI}/v1/accounts/{cfg._account}` with `{"keys": …}`), then a data message naming
 * the account, so Deckhand's platform test can follow the official runtime's key updates.
 */
async function rotateKeys(msg, cfg) {
    await this.emit('updateKeys', (msg.body || {}).keys);
    return {
        id: randomUUID(),
        body: { account: cfg._account, rotated: true },
        attachments: {},
        headers: {},
        metadata: {}
    };
}

exports.process = rotateKeys;
