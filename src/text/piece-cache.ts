// Tokenizing a long prompt piece by piece, with the pieces remembered.
//
// A chat prompt is mostly text the server has tokenized before: Claude Code
// resends its ~40 KB system prompt and tools on every turn, and a long
// conversation resends every earlier turn. @huggingface/tokenizers first splits
// the text at added tokens ("<|end|>", "<|user|>"...) and tokenizes each
// section on its own, so a prompt cut right before an added token tokenizes as
// the concatenation of its pieces. Phi-3's tokenizer has no pre-tokenizer, so a
// whole section is one BPE word: 13K tokens take 0.2-0.6 s on one core, every
// turn. Remembered pieces make that a lookup.
//
// Cuts go only where the result cannot change: before an added token matched on
// the raw text (not normalized) that strips no whitespace on its left. A probe
// at construction compares piecewise and whole encodes and turns the cache off
// for a tokenizer where they differ.

/** What the piecewise encoder needs from the library's tokenizer. */
export interface SectionTokenizer {
  /** Whole-text encode without special tokens (the library's). */
  encodePlain(text: string): number[];
  /** The library's added tokens. */
  addedTokens(): Iterable<{ content: string; lstrip: boolean; normalized: boolean; single_word: boolean }>;
}

/** Texts shorter than this are encoded whole: the split costs more than it saves. */
export const PIECEWISE_MIN_CHARS = 4096;
/** Pieces shorter than this are not remembered. */
const REMEMBER_MIN_CHARS = 512;
/** Characters of remembered pieces at most (about 2 bytes each, plus their ids). */
const CACHE_CHARS = 4 * 1024 * 1024;

export class PieceCache {
  readonly #tokenizer: SectionTokenizer;
  /** Every added token matched on raw text, as the library splits (leftmost, longest). */
  readonly #added: RegExp | null;
  /** Those a piece may start at. */
  readonly #cuts: Set<string>;
  readonly #pieces = new Map<string, number[]>();
  #chars = 0;
  /** Piecewise encoding agreed with the whole encode on the probe (else off). */
  readonly enabled: boolean;
  hits = 0;
  misses = 0;

  constructor(tokenizer: SectionTokenizer) {
    this.#tokenizer = tokenizer;
    const raw: string[] = [];
    this.#cuts = new Set();
    for (const t of tokenizer.addedTokens()) {
      if (t.normalized || t.content.length === 0) continue;
      raw.push(t.content);
      if (!t.lstrip && !t.single_word) this.#cuts.add(t.content);
    }
    // Longest first: at one position the library's dictionary splitter takes the longest match.
    raw.sort((a, b) => b.length - a.length);
    this.#added = raw.length > 0 ? new RegExp(raw.map(escapeRegExp).join("|"), "g") : null;
    this.enabled = this.#cuts.size > 0 && this.#agrees([...this.#cuts]);
  }

  /** Token ids of `text` (no special tokens added), from remembered pieces where possible. */
  encode(text: string): number[] {
    if (!this.enabled || text.length < PIECEWISE_MIN_CHARS) return this.#tokenizer.encodePlain(text);
    const ids: number[] = [];
    for (const piece of this.#split(text)) {
      for (const id of this.#piece(piece)) ids.push(id);
    }
    return ids;
  }

  #piece(piece: string): number[] {
    if (piece.length < REMEMBER_MIN_CHARS) return this.#tokenizer.encodePlain(piece);
    const known = this.#pieces.get(piece);
    if (known) {
      this.hits++;
      this.#pieces.delete(piece); // most recently used goes last
      this.#pieces.set(piece, known);
      return known;
    }
    this.misses++;
    const ids = this.#tokenizer.encodePlain(piece);
    if (piece.length <= CACHE_CHARS / 4) {
      this.#pieces.set(piece, ids);
      this.#chars += piece.length;
      for (const [oldest] of this.#pieces) {
        if (this.#chars <= CACHE_CHARS) break;
        this.#pieces.delete(oldest);
        this.#chars -= oldest.length;
      }
    }
    return ids;
  }

  /** The text cut right before each cut token (the first piece may start with text). */
  #split(text: string): string[] {
    const added = this.#added as RegExp;
    const pieces: string[] = [];
    let start = 0;
    added.lastIndex = 0;
    for (let m = added.exec(text); m !== null; m = added.exec(text)) {
      if (m.index > start && this.#cuts.has(m[0])) {
        pieces.push(text.slice(start, m.index));
        start = m.index;
      }
    }
    pieces.push(text.slice(start));
    return pieces;
  }

  /** Piecewise equals whole on a probe with every cut token between text, spaces and newlines. */
  #agrees(cuts: string[]): boolean {
    const filler = ["Hello world", " leading space", "\n\nnew lines \n", "x", "  two  spaces ", "ünïcödé 字 🙂", ""];
    let probe = "Some plain text first.";
    cuts.slice(0, 64).forEach((token, i) => {
      probe += token + filler[i % filler.length] + token + filler[(i + 3) % filler.length];
    });
    probe += " trailing text";
    const whole = this.#tokenizer.encodePlain(probe);
    const pieces = this.#split(probe).flatMap((p) => this.#tokenizer.encodePlain(p));
    return whole.length === pieces.length && whole.every((id, i) => id === pieces[i]);
  }
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
