// Page id (the API's menu ids, /console/<id>) -> view.
import Audit from "./Audit.vue";
import Channel from "./Channel.vue";
import Codes from "./Codes.vue";
import Devices from "./Devices.vue";
import Dialer from "./Dialer.vue";
import Home from "./Home.vue";
import Iam from "./Iam.vue";
import Registry from "./Registry.vue";
import Video from "./Video.vue";
import Webhooks from "./Webhooks.vue";

export const VIEWS = { home: Home, devices: Devices, registry: Registry, codes: Codes, video: Video, dialer: Dialer,
  channel: Channel, webhooks: Webhooks, iam: Iam, audit: Audit };
