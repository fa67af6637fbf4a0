// The entry point of every page: the header's sign-in, then the page's own
// controller, chosen by <body data-page="…">. ES modules from /static/js/, no
// build step (docs/architecture.md).

import { state } from "./core.js";
import { categoryPage } from "./pages/category.js";
import { channelPage } from "./pages/channel.js";
import { homePage } from "./pages/home.js";
import { moderationPage } from "./pages/moderation.js";
import { publishPage } from "./pages/publish.js";
import { studioPage } from "./pages/studio.js";
import { videoPage } from "./pages/video.js";
import { walletPage } from "./pages/wallet.js";
import { watchPage } from "./pages/watch.js";
import { setUpSignIn } from "./signin.js";

const pages = {
  home: homePage, watch: watchPage, publish: publishPage, studio: studioPage, video: videoPage,
  wallet: walletPage, channel: channelPage, category: categoryPage, moderation: moderationPage,
};

setUpSignIn();
if (pages[state.page]) pages[state.page]();
document.body.dataset.ready = "true";  // tests wait for this before they click
