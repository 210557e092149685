// The classic-script build (`dist/livevote.global.js`): sets `window.livevote`, for pages that
// cannot load modules, such as a `file://` page in an OBS browser source, where Chromium
// refuses `<script type="module" src>`.
export { connect, LivevoteError } from "./index.js";
