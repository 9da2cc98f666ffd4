include $(sort $(wildcard $(BR2_EXTERNAL_OTTER_PATH)/package/*/*.mk))
