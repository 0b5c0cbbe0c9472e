/* libFuzzer harness: the payload parsers of consumers/engine/_parse.c, pkt_parse_payloads and
 * pkt_attack_suspects, called as consumers/engine/parse.py and consumers/alerts/attacks.py call
 * them: an (n, width) uint8 matrix (stride = width), one int64 length per row (the decoder's
 * full bytes length, which may exceed the width: the C loop cuts it), out (n, 10) int32 or (n,)
 * uint8.
 *
 * Input: byte 0 the shape, then the payload bytes.
 *   shape < 0x80   one row as wide as the payload and holding all of it: the matrix ends where
 *                  the payload ends, so a read past the valid bytes is an ASan report;
 *   shape >= 0x80  1 + (shape & 7) rows of width WIDTHS[(shape >> 3) & 7], the payload cut into
 *                  equal parts, each row's length its part's (longer than the width when cut).
 * Checked besides memory safety: what parse.py and features.py rely on, every offset and length
 * inside the row's valid bytes, kinds, methods and status codes in their ranges.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../consumers/engine/_parse.c"
#include "input.h"

static const int64_t WIDTHS[8] = { 1, 8, 24, 64, 100, 256, 512, 1024 };

/* The two calls under test (their signatures change here only). */
static int64_t parse_call(const uint8_t *pay, int64_t n, int64_t width, const int64_t *lens, int32_t *out)
{
	return pkt_parse_payloads(pay, n, width, width, lens, out);
}

static void suspects_call(const uint8_t *pay, int64_t n, int64_t width, const int64_t *lens, uint8_t *out)
{
	pkt_attack_suspects(pay, n, width, width, lens, out);
}

static void check_row(const int32_t *o, int64_t len)
{
	int32_t kind = o[0];
	CHECK(kind >= K_NONE && kind <= K_HTTP1_RESPONSE, "kind %d", kind);
	CHECK(o[1] >= 0 && o[1] <= 9, "method %d", o[1]);
	CHECK(o[6] >= 0 && o[6] <= 15, "flags %d", o[6]);
	if (kind == K_HTTP1) {
		CHECK(o[2] >= 0 && o[3] >= 0 && (int64_t)o[2] + o[3] <= len, "path %d+%d in %lld bytes", o[2], o[3],
		      (long long)len);
	}
	if (o[5] > 0)
		CHECK(o[4] >= 0 && (int64_t)o[4] + o[5] <= len, "host %d+%d in %lld bytes", o[4], o[5], (long long)len);
	CHECK(o[5] >= 0, "host length %d", o[5]);
	CHECK(o[8] == 0 || (o[8] >= 100 && o[8] <= 599), "status %d", o[8]);
	CHECK(o[9] >= -1, "content length %d", o[9]);
	if (kind == K_NONE)
		for (int c = 1; c < OUT_COLS; c++)
			CHECK(o[c] == 0, "column %d of an unrecognised row is %d", c, o[c]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct input in = { data, size };
	uint8_t shape = in_u8(&in);
	int64_t rest = (int64_t)in.left;
	int64_t n, width;
	if (shape < 0x80) {
		if (rest == 0)
			return 0;
		n = 1;
		width = rest;
	} else {
		n = 1 + (shape & 7);
		width = WIDTHS[(shape >> 3) & 7];
	}
	uint8_t *pay = calloc((size_t)(n * width), 1);
	int64_t *lens = calloc((size_t)n, sizeof(int64_t));
	int32_t *out = calloc((size_t)(n * OUT_COLS), sizeof(int32_t));
	uint8_t *sus = calloc((size_t)n, 1);
	int64_t part = rest / n;
	for (int64_t r = 0; r < n; r++) {
		const uint8_t *src = in.p + r * part;
		int64_t len = r == n - 1 ? rest - r * part : part;
		memcpy(pay + r * width, src, (size_t)(len < width ? len : width));
		lens[r] = len;
	}
	int64_t found = parse_call(pay, n, width, lens, out);
	suspects_call(pay, n, width, lens, sus);
	int64_t kinds = 0;
	for (int64_t r = 0; r < n; r++) {
		int64_t len = lens[r] < width ? lens[r] : width;
		check_row(out + r * OUT_COLS, len);
		kinds += out[r * OUT_COLS] != K_NONE;
		CHECK(sus[r] <= 1, "suspect %d", sus[r]);
	}
	CHECK(found == kinds, "returned %lld recognised rows, %lld have a kind", (long long)found, (long long)kinds);
	free(pay);
	free(lens);
	free(out);
	free(sus);
	return 0;
}
