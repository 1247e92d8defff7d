// The raw bytes each token stands for. Vocabularies write bytes in their own
// way: GPT-2 byte-level BPE maps every byte to a printable character ("Ġ" is
// a space), SentencePiece writes a space as "▁" and keeps bytes it cannot
// spell as "<0xNN>" pieces. Constrained decoding reasons about output bytes,
// and OpenAI's logprobs report them.
import type { Tokenizer } from "./tokenizer.ts";

export type PieceStyle = "byte-level" | "sentencepiece" | "plain";

const styles = new WeakMap<Tokenizer, PieceStyle>();

/** How the vocabulary writes bytes: GPT-2 byte-level ("Ġ" for a space), SentencePiece ("▁", <0xNN>), or plain text. */
export function pieceStyle(tokenizer: Tokenizer): PieceStyle {
  let style = styles.get(tokenizer);
  if (!style) {
    const pieces = tokenizer.encode(" a b", { addSpecialTokens: false }).map((id) => tokenizer.idToToken(id) ?? "");
    style = pieces.some((p) => p.includes("\u2581"))
      ? "sentencepiece"
      : pieces.some((p) => p.includes("\u0120"))
        ? "byte-level"
        : "plain";
    styles.set(tokenizer, style);
  }
  return style;
}

/** GPT-2's byte → printable character table, inverted (character → byte). */
const byteLevelDecoder: Map<string, number> = (() => {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const map = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const code = printable(b) ? b : 256 + extra++;
    map.set(String.fromCodePoint(code), b);
  }
  return map;
})();

const utf8 = new TextEncoder();

/** A piece's bytes under the vocabulary's style (special and added tokens are plain text). */
function pieceBytes(tokenizer: Tokenizer, id: number, piece: string): Uint8Array {
  if (tokenizer.isSpecial(id) || tokenizer.addedIds.has(id)) return utf8.encode(piece);
  const style = pieceStyle(tokenizer);
  if (style === "byte-level") {
    const bytes = new Uint8Array(piece.length);
    let n = 0;
    for (const ch of piece) {
      const b = byteLevelDecoder.get(ch);
      // Not a byte-level piece after all: its text is what decode writes.
      if (b === undefined) return utf8.encode(piece);
      bytes[n++] = b;
    }
    return bytes.subarray(0, n);
  }
  if (style === "sentencepiece") {
    const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
    if (byte) return Uint8Array.of(Number.parseInt(byte[1] as string, 16));
    return utf8.encode(piece.replaceAll("\u2581", " "));
  }
  return utf8.encode(piece);
}

/** The raw bytes one token stands for (a special token: its text). Empty for unknown ids. */
export function tokenBytes(tokenizer: Tokenizer, id: number): Uint8Array {
  const piece = tokenizer.idToToken(id);
  return piece === undefined ? new Uint8Array(0) : pieceBytes(tokenizer, id, piece);
}

const tables = new WeakMap<Tokenizer, ReadonlyArray<Uint8Array | null>>();

/**
 * id → bytes for every token that can appear inside generated text, built
 * once per tokenizer. Special and control tokens (BOS, EOS, chat markers),
 * unknown ids and empty pieces are null: they never spell text.
 */
export function tokenByteTable(tokenizer: Tokenizer): ReadonlyArray<Uint8Array | null> {
  let table = tables.get(tokenizer);
  if (!table) {
    const out: Array<Uint8Array | null> = new Array(tokenizer.vocabSize).fill(null);
    for (let id = 0; id < tokenizer.vocabSize; id++) {
      const piece = tokenizer.idToToken(id);
      if (piece === undefined || tokenizer.isSpecial(id)) continue;
      const bytes = pieceBytes(tokenizer, id, piece);
      if (bytes.length > 0) out[id] = bytes;
    }
    table = out;
    tables.set(tokenizer, table);
  }
  return table;
}

const bounds = new WeakMap<Tokenizer, number | null>();

/**
 * The most input bytes one token can stand for, or null when the tokenizer's
 * pipeline may drop or shrink text (then no bound holds). A prompt of B bytes
 * then needs at least ⌈B / bound⌉ tokens: this is what lets the server refuse
 * a prompt that cannot fit the context without tokenizing it. Special and
 * added tokens count with their text; an unknown character (up to 4 bytes)
 * may become one token.
 */
export function maxInputBytesPerToken(tokenizer: Tokenizer): number | null {
  let bound = bounds.get(tokenizer);
  if (bound === undefined) {
    bound = null;
    if (tokenizer.keepsInputBytes) {
      let most = 4;
      for (let id = 0; id < tokenizer.vocabSize; id++) {
        const piece = tokenizer.idToToken(id);
        if (piece !== undefined) most = Math.max(most, pieceBytes(tokenizer, id, piece).length);
      }
      bound = most;
    }
    bounds.set(tokenizer, bound);
  }
  return bound;
}
