/** Types of `livevote/global` (`dist/livevote.global.js`): the classic script sets `window.livevote`. */
import type { connect as connectFunction, LivevoteError as LivevoteErrorClass } from "./index.js";
export * from "./index.js";
declare global {
  interface Window {
    livevote: { connect: typeof connectFunction; LivevoteError: typeof LivevoteErrorClass };
  }
}
