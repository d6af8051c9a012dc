/** A bounded FIFO between a handle's incoming messages and whoever iterates the handle. */
export class Buffer<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private closed = false;
  private waiting: Array<() => void> = [];

  constructor(private readonly size: number) {}

  /** Adds the item unless full or closed; says whether it was added. */
  push(item: T): boolean {
    if (this.closed || this.items.length >= this.size) return false;
    this.items.push(item);
    this.notify();
    return true;
  }

  /** No more items: iteration drains what is left, then ends. */
  close(): void {
    this.closed = true;
    this.notify();
  }

  private notify(): void {
    const waiting = this.waiting;
    this.waiting = [];
    for (const wake of waiting) wake();
  }

  async next(): Promise<IteratorResult<T>> {
    while (this.items.length === 0) {
      if (this.closed) return { done: true, value: undefined };
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
    return { done: false, value: this.items.shift() as T };
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}
