// The part of @polkadot/api the wallet page uses: a connection to the chain's
// RPC and the transaction builder. Bundled by build.mjs into
// signaling/static/vendor/polkadot-api.js (an ES module the page imports).
export { ApiPromise, WsProvider } from "@polkadot/api";
