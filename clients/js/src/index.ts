export { Client, RemoteModel, HemlError, PROTOCOL_MAJOR } from "./client.js";
export type { ClientOptions, ModelInfo, ServerInfo } from "./client.js";
export { SecretKey, encryptCoefficients, decryptReply, checkParams } from "./crypto.js";
export { RowGeometry, encryptBlock, decodeBlock } from "./layouts.js";
export type { Plan, LayoutName } from "./layouts.js";
export { probabilities, classIndices, regressionOutput } from "./links.js";
export type { Link } from "./links.js";
export { Bounds, Preprocessing } from "./preprocess.js";
