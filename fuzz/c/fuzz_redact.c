/* libFuzzer harness: the credential redaction loop, pkt_redact (producer/_redact.c), called as
 * producer/privacy.py redact() calls it on a batch of kernel records (schemas/record.py): the
 * payload pointer at PAYLOAD_OFFSET of the first record, stride = the record size, width = the
 * payload area (payload_bytes rounded up to 8), cap_len the records' uint16 field at offset 70,
 * cap_stride = stride / 2, extra = more credential names, each ended by a NUL, then an empty one.
 *
 * Input: byte 0 the shape, then the payload bytes.
 *   shape < 0x80   one record whose payload area holds the whole input (rounded down to 8 bytes,
 *                  at most 256) with cap_len = the area: the allocation ends where the valid bytes
 *                  end, so a read or write past them is an ASan report;
 *   shape >= 0x80  1 + (shape & 7) records of payload_bytes PAYLOAD_BYTES[(shape >> 3) & 7], each
 *                  with a cap_len from the input (any uint16: the loop cuts it to the width) and
 *                  the next part of the payload bytes.
 *   shape & 0x40   extra names as `pktstream produce --redact-names` passes them.
 *   shape & 0x20   (one record only) flags = KEEP_HTTP2_HEADERS, as --keep-http2-headers passes it.
 * Checked besides memory safety: only bytes within a row's valid prefix change, each to '*', the
 * count returned is the number of rows that changed, and a second call changes nothing (idempotent).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../producer/_redact.c"
#include "input.h"

#define PAYLOAD_OFFSET 80 /* schemas/record.py */
#define CAP_LEN_OFFSET 70
#define MAX_PAYLOAD_BYTES 256

static const int64_t PAYLOAD_BYTES[8] = { 1, 8, 13, 64, 100, 128, 200, 256 };
static const char EXTRA[] = "otp\0pin\0x-secret\0\0"; /* privacy.names_buffer(["otp", "PIN", "x-secret"]) */

/* The one call under test (its signature changes here only). */
static int64_t redact_call(uint8_t *records, int64_t n, int64_t stride, int64_t width, const char *extra,
			   int64_t flags)
{
	return pkt_redact(records + PAYLOAD_OFFSET, n, stride, width, (const uint16_t *)(records + CAP_LEN_OFFSET),
			  stride / 2, extra, flags);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct input in = { data, size };
	uint8_t shape = in_u8(&in);
	const char *extra = (shape & 0x40) ? EXTRA : "";
	int64_t flags = (shape < 0x80 && (shape & 0x20)) ? 1 : 0; /* KEEP_HTTP2_HEADERS */
	int64_t n, pb;
	if (shape < 0x80) {
		pb = (int64_t)(in.left < MAX_PAYLOAD_BYTES ? in.left : MAX_PAYLOAD_BYTES) & ~7;
		if (pb == 0)
			return 0;
		n = 1;
	} else {
		n = 1 + (shape & 7);
		pb = PAYLOAD_BYTES[(shape >> 3) & 7];
	}
	int64_t width = (pb + 7) & ~7; /* record.payload_area */
	int64_t stride = PAYLOAD_OFFSET + width;
	uint8_t *recs = malloc((size_t)(n * stride));
	uint8_t *before = malloc((size_t)(n * stride));
	memset(recs, 0xA5, (size_t)(n * stride)); /* header fields: anything */
	for (int64_t r = 0; r < n; r++) {
		uint8_t *rec = recs + r * stride;
		uint16_t cap = shape < 0x80 ? (uint16_t)width : in_u16(&in);
		memcpy(rec + CAP_LEN_OFFSET, &cap, sizeof(cap));
		int64_t take = r == n - 1 ? (int64_t)in.left : (int64_t)in.left / (n - r);
		if (take > width)
			take = width;
		memcpy(rec + PAYLOAD_OFFSET, in.p, (size_t)take);
		in.p += take;
		in.left -= (size_t)take;
	}
	memcpy(before, recs, (size_t)(n * stride));
	int64_t count = redact_call(recs, n, stride, width, extra, flags);
	int64_t changed_rows = 0;
	for (int64_t r = 0; r < n; r++) {
		uint8_t *rec = recs + r * stride, *old = before + r * stride;
		uint16_t cap;
		memcpy(&cap, old + CAP_LEN_OFFSET, sizeof(cap));
		int64_t len = cap < width ? cap : width;
		int changed = 0;
		for (int64_t i = 0; i < stride; i++) {
			if (rec[i] == old[i])
				continue;
			int64_t at = i - PAYLOAD_OFFSET;
			CHECK(at >= 0 && at < len, "record %lld: byte %lld changed (valid payload bytes 0..%lld)",
			      (long long)r, (long long)at, (long long)len);
			CHECK(rec[i] == '*', "record %lld: payload byte %lld became 0x%02x", (long long)r, (long long)at,
			      rec[i]);
			changed = 1;
		}
		changed_rows += changed;
	}
	CHECK(count == changed_rows, "returned %lld, %lld rows changed", (long long)count, (long long)changed_rows);
	memcpy(before, recs, (size_t)(n * stride));
	int64_t again = redact_call(recs, n, stride, width, extra, flags);
	CHECK(again == 0 && memcmp(before, recs, (size_t)(n * stride)) == 0,
	      "a second pass changed %lld rows (redaction must be idempotent)", (long long)again);
	free(recs);
	free(before);
	return 0;
}
